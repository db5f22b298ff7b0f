"""The torchvision import fix: applied only when torchvision fails the CPU-torch way, a no-op otherwise."""

import subprocess
import sys
import textwrap

FAKE_BROKEN = """
import sys
if "torchvision._meta_registrations" not in sys.modules:
    raise RuntimeError("operator torchvision::nms does not exist")
OK = True
"""

FAKE_HEALTHY = "OK = True\n"

FAKE_OTHER_ERROR = 'raise RuntimeError("something unrelated")\n'


def _run_with_fake_torchvision(tmp_path, init_source):
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(init_source)
    code = textwrap.dedent(
        """
        import importlib.util, sys
        # Load the module alone: the package __init__ would also import timm and open_clip.
        spec = importlib.util.spec_from_file_location("compat", "{path}")
        compat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        print(compat.TORCHVISION_PATCHED, sys.modules["torchvision"].OK,
              "torchvision._meta_registrations" in sys.modules)
        """
    ).replace("{path}", f"{_repo_root()}/tpsnet_plugin/_torchvision_compat.py")
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{tmp_path}:{_repo_root()}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _repo_root():
    import pathlib

    return str(pathlib.Path(__file__).resolve().parents[1])


def test_fix_applied_when_meta_registrations_fail(tmp_path):
    result = _run_with_fake_torchvision(tmp_path, FAKE_BROKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_noop_when_torchvision_imports(tmp_path):
    result = _run_with_fake_torchvision(tmp_path, FAKE_HEALTHY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "False"]


def test_unrelated_runtime_error_is_not_swallowed(tmp_path):
    result = _run_with_fake_torchvision(tmp_path, FAKE_OTHER_ERROR)
    assert result.returncode != 0
    assert "something unrelated" in result.stderr


def test_real_torchvision_timm_open_clip_import():
    import tpsnet_plugin  # noqa: F401
    import open_clip
    import torchvision
    import timm

    assert torchvision.__version__ and timm.__version__ and open_clip.__version__
