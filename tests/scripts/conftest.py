"""Shared fixtures for the tests of ``scripts/`` (a package of modules run with ``python -m scripts.<name>``)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: the module ``scripts.<name>`` (the scripts are a package run with ``-m``)."""

    def load(name: str):
        return importlib.import_module(f"scripts.{name}")

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
