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
    import tpsnet_plugin  # noqa: F401, I001  (first: its import-time fix, as without the .pth hook)
    import open_clip
    import torchvision
    import timm

    assert torchvision.__version__ and timm.__version__ and open_clip.__version__


# --- The start-up hook: the .pth line, run by `site` in a fresh interpreter, then `import torchvision`. ---
# `python -S` keeps the venv's own installed .pth out; site.addsitedir() then runs only the test's copy.


def _load_hook():
    import importlib.util

    spec = importlib.util.spec_from_file_location("startup_hook", f"{_repo_root()}/tpsnet_plugin/_startup_hook.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def _run_with_pth(tmp_path, init_source, code, package_root=None, env=None):
    """Run `code` after the .pth, with a fake torchvision (None: none at all) and tpsnet_plugin from package_root."""
    hook = _load_hook()
    tmp_path.mkdir(exist_ok=True)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / hook.PTH_NAME).write_text(hook.PTH_CONTENT)
    paths = [package_root or _repo_root()]
    if init_source is not None:
        (tmp_path / "torchvision").mkdir()
        (tmp_path / "torchvision" / "__init__.py").write_text(init_source)
        paths.insert(0, str(tmp_path))
    prelude = f"import site, sys; site.addsitedir({str(site_dir)!r})\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + textwrap.dedent(code)],
        env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin", **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


HOOKED = "any(getattr(f, '_tpsnet_plugin_torchvision_hook', False) for f in sys.meta_path)"


def test_pth_installs_hook_without_importing_torch(tmp_path):
    result = _run_with_pth(tmp_path, FAKE_BROKEN, f"""
        print({HOOKED}, "torch" in sys.modules, "torchvision" in sys.modules, "tpsnet_plugin" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False", "False"]


def test_pth_hook_fixes_first_torchvision_import(tmp_path):
    # No tpsnet_plugin import: the hook alone makes the first `import torchvision` work, then steps aside.
    result = _run_with_pth(tmp_path, FAKE_BROKEN, f"""
        import torchvision
        print(torchvision.OK, "torchvision._meta_registrations" in sys.modules, {HOOKED})
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]


def test_pth_hook_changes_nothing_where_torchvision_imports(tmp_path):
    probe = f"""
        print({HOOKED})
        import importlib.util
        found = importlib.util.find_spec("torchvision")
        import torchvision
        spec = torchvision.__spec__
        print(found.origin == spec.origin, found.submodule_search_locations == spec.submodule_search_locations,
              type(spec.loader).__name__, torchvision.__file__ == spec.origin, torchvision.OK,
              sorted(m for m in sys.modules if m.startswith("torchvision")), sys.modules["torchvision"] is torchvision)
    """
    hooked = _run_with_pth(tmp_path, FAKE_HEALTHY, probe)
    plain = _run_with_pth(tmp_path / "off", FAKE_HEALTHY, probe, env={"TPSNET_PLUGIN_NO_TORCHVISION_HOOK": "1"})
    assert hooked.returncode == 0, hooked.stderr
    assert plain.returncode == 0, plain.stderr
    (hooked_before, hooked_facts), (plain_before, plain_facts) = hooked.stdout.splitlines(), plain.stdout.splitlines()
    assert (hooked_before, plain_before) == ("True", "False")
    assert hooked_facts == plain_facts
    assert hooked_facts.split() == ["True", "True", "SourceFileLoader", "True", "True", "['torchvision']", "True"]


def test_pth_hook_keeps_unrelated_errors(tmp_path):
    result = _run_with_pth(tmp_path, FAKE_OTHER_ERROR, "import torchvision")
    assert result.returncode != 0
    assert "RuntimeError: something unrelated" in result.stderr


def test_pth_hook_keeps_missing_torchvision_an_import_error(tmp_path):
    result = _run_with_pth(tmp_path, None, f"""
        try:
            import torchvision
        except ModuleNotFoundError as error:
            print(error.name, {HOOKED})
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torchvision", "True"]


def test_pth_hook_inside_package_import_reports_patch(tmp_path):
    # The package's own fix asks for torchvision while the hook waits: the fix runs once and says so.
    result = _run_with_pth(tmp_path, FAKE_BROKEN, f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("tpsnet_plugin._torchvision_compat",
                                                      "{_repo_root()}/tpsnet_plugin/_torchvision_compat.py")
        compat = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = compat
        spec.loader.exec_module(compat)
        print(compat.TORCHVISION_PATCHED, sys.modules["torchvision"].OK, {HOOKED})
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]


def test_pth_never_breaks_startup(tmp_path):
    # tpsnet_plugin gone (a left-over .pth) or its hook broken: Python starts, silently, without a hook.
    empty = tmp_path / "empty"
    empty.mkdir()
    gone = _run_with_pth(tmp_path / "gone", FAKE_BROKEN, f"print({HOOKED})", package_root=str(empty))
    broken_package = tmp_path / "broken" / "tpsnet_plugin"
    broken_package.mkdir(parents=True)
    (broken_package / "__init__.py").write_text("raise SystemExit('package imported at start-up')\n")
    (broken_package / "_startup_hook.py").write_text("raise ImportError('broken hook')\n")
    broken = _run_with_pth(tmp_path / "run", FAKE_BROKEN, f"print({HOOKED})", package_root=str(broken_package.parent))
    for result in (gone, broken):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.split() == ["False"]


def test_pth_hook_disabled_by_environment(tmp_path):
    result = _run_with_pth(tmp_path, FAKE_BROKEN, f"print({HOOKED}, 'tpsnet_plugin._startup_hook' in sys.modules)",
                           env={"TPSNET_PLUGIN_NO_TORCHVISION_HOOK": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
