"""The README's launch command, as a user types it, in the environment running the tests.

On a CPU-only install PyPI's torchvision is a CUDA build whose import fails; the ``accelerate`` console script
imports it (accelerate -> timm -> torchvision) before the training script can import the package's fix, so
these pass only when the install put the start-up hook's ``.pth`` file in site-packages (setup.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REINSTALL = "reinstall the package (make install, or pip install -c constraints-cpu.txt -e '.[cpu,test]')"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_accelerate_launch_console_script():
    accelerate = BIN / "accelerate"
    assert accelerate.exists(), f"no accelerate console script beside {sys.executable}"
    command = [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "examples/train_ucdir.py", "--help"]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{REINSTALL}?\n{result.stderr[-3000:]}"
    assert "usage:" in result.stdout


def test_startup_imports_no_torch_and_installs_hook(tmp_path):
    # Run outside the repo so that the installed package is what the .pth finds, as for any user.
    code = (
        "import sys; print('torch' in sys.modules, 'torchvision' in sys.modules, 'tpsnet_plugin' in sys.modules, "
        "any(getattr(f, '_tpsnet_plugin_torchvision_hook', False) for f in sys.meta_path))"
    )
    env = {key: value for key, value in _env().items() if key != "TPSNET_PLUGIN_NO_TORCHVISION_HOOK"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    torch, torchvision, package, hooked = result.stdout.split()
    assert (torch, torchvision, package) == ("False", "False", "False")
    assert hooked == "True", f"tpsnet_plugin_torchvision_fix.pth is not installed: {REINSTALL}"


@pytest.mark.slow
def test_wheel_and_editable_wheel_ship_the_pth_and_package_data(tmp_path):
    # What pip install . and pip install -e . get from the build backend, built from a copy of the sources.
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject.toml's build requirement")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tpsnet_plugin", source / "tpsnet_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    code = f"from setuptools import build_meta as b; b.build_wheel({str(out)!r}); b.build_editable({str(out)!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    spec = importlib.util.spec_from_file_location("startup_hook", ROOT / "tpsnet_plugin" / "_startup_hook.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 2 and any(".editable-" in wheel.name for wheel in wheels), wheels
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            assert archive.read(hook.PTH_NAME).decode() == hook.PTH_CONTENT, wheel.name
            record = next(name for name in archive.namelist() if name.endswith(".dist-info/RECORD"))
            lines = archive.read(record).decode().splitlines()
            assert any(line.startswith(hook.PTH_NAME + ",sha256=") for line in lines), wheel.name
    # the regular wheel carries the package data: Digits arrays, model configs and the offline CLIP weights
    with zipfile.ZipFile(next(wheel for wheel in wheels if ".editable-" not in wheel.name)) as archive:
        names = set(archive.namelist())
    assert "tpsnet_plugin/data/digits_arrays/mnist-m.npz" in names
    assert "tpsnet_plugin/text_prior/weights/tpsnet-tiny-clip-icons.safetensors" in names
    assert any(name.startswith("tpsnet_plugin/text_prior/model_configs/") for name in names)
