"""Shared fixtures for the tests of ``scripts/`` (plain scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)`` imports ``scripts/<name>.py`` as a module."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
        spec.loader.exec_module(module)
        return module

    return load


class _Payload:
    """Pickles as a call of ``os.mkdir(marker)``: code that runs when the file is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


@pytest.fixture
def pickled_code_file():
    """``pickled_code_file(path, marker)`` torch-saves at ``path`` a dict whose unpickling creates ``marker``."""

    def write(path: Path, marker: Path) -> Path:
        import torch

        torch.save({"state_dict": _Payload(marker)}, path)
        return path

    return write


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(prog)``: the captured stderr, checked to be exactly one line ``<prog>: error: ...``
    without a traceback, returned (stdout and stderr captured so far are consumed)."""

    def read(prog: str) -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
        assert "Traceback" not in err
        return lines[0]

    return read
