"""Build steps pyproject.toml cannot express: ship ``tpsnet_plugin_torchvision_fix.pth`` at the root of
site-packages, in the wheel and in the editable wheel alike (metadata stays in pyproject.toml).

The file's name and text come from ``tpsnet_plugin/_startup_hook.py`` (see its docstring for what it does).
A wheel gets it from ``build_py`` writing it at the root of ``build_lib``. An editable install
(``pip install -e .``, PEP 660) does not ship ``build_lib``, so ``editable_wheel`` adds it to the wheel it
built, with its line in RECORD so that ``pip uninstall`` removes it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).resolve().parent


def _pth() -> tuple[str, bytes]:
    # Load the hook module by path: importing the package would import torch.
    spec = importlib.util.spec_from_file_location("_startup_hook", HERE / "tpsnet_plugin" / "_startup_hook.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook.PTH_NAME, hook.PTH_CONTENT.encode()


def _add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(wheel) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    if any(info.filename == name for info, _ in entries):
        return
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record_line = f"{name},sha256={digest},{len(data)}\n".encode()
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    partial = wheel.with_name(wheel.name + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        target.writestr(info, data)
        for entry, content in entries:
            if entry.filename.endswith(".dist-info/RECORD"):
                content = content if content.endswith(b"\n") or not content else content + b"\n"
                content += record_line
            target.writestr(entry, content)
    partial.replace(wheel)


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            name, data = _pth()
            Path(self.build_lib, name).write_bytes(data)

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs.append(str(Path(self.build_lib, _pth()[0])))
        return outputs


class EditableWheelWithPth(editable_wheel):
    def run(self):
        super().run()
        name, data = _pth()
        for wheel in Path(self.dist_dir).glob("tpsnet_plugin-*.editable-*.whl"):
            _add_to_wheel(wheel, name, data)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
