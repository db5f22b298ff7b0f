"""Apply the torchvision import fix to every interpreter of the environment, on the first ``import torchvision``.

The package fixes torchvision when it is imported (see ``_torchvision_compat``), but a program can import
torchvision first: the ``accelerate`` console script imports timm, and timm imports torchvision, before the
training script imports this package. So the install also puts ``tpsnet_plugin_torchvision_fix.pth``
(:data:`PTH_NAME`, text :data:`PTH_CONTENT`) at the root of site-packages. Python runs it at start-up; it
loads this file by path (the package's ``__init__`` is not run: it imports torch) and calls :func:`install`,
which puts :class:`TorchvisionImportHook` first on ``sys.meta_path``. Nothing else happens at start-up: no
torch, no torchvision, and any exception is swallowed, so a broken or half-removed install never stops Python.

On the first ``import torchvision`` the hook takes itself off ``sys.meta_path`` and lets
``_torchvision_compat`` import torchvision, which applies the fix only when torchvision fails the CPU-torch
way. Where torchvision imports normally the result is the same module a plain import gives; where it is
absent or fails otherwise, the plain import's error is raised.

Turn it off with the environment variable ``TPSNET_PLUGIN_NO_TORCHVISION_HOOK=1``, or delete the ``.pth``
file (``pip uninstall tpsnet-plugin`` removes it).
"""

# Imports stay this few, and those of the import system happen on the first torchvision import: this module
# runs at every interpreter start-up, where importlib.util alone would cost milliseconds.
import os
import sys

PTH_NAME = "tpsnet_plugin_torchvision_fix.pth"
"""Sorts after setuptools' ``__editable__.*.pth``, so an editable install's finder is there when it runs."""

DISABLE_ENV = "TPSNET_PLUGIN_NO_TORCHVISION_HOOK"

_MARK = "_tpsnet_plugin_torchvision_hook"
_COMPAT = "tpsnet_plugin._torchvision_compat"

_PTH_CODE = f"""\
try:
    import os
    if not os.environ.get({DISABLE_ENV!r}):
        try:  # the import system's own modules, loaded already; importlib.util would cost milliseconds
            from _frozen_importlib import module_from_spec
            from _frozen_importlib_external import spec_from_file_location
        except ImportError:
            from importlib.util import module_from_spec, spec_from_file_location
        for finder in sys.meta_path:  # importlib.util.find_spec("tpsnet_plugin"), without running the package
            package = getattr(finder, "find_spec", lambda *args: None)("tpsnet_plugin", None)
            if package is not None:
                break
        path = os.path.join(package.submodule_search_locations[0], "_startup_hook.py")
        spec = spec_from_file_location("tpsnet_plugin._startup_hook", path)
        hook = module_from_spec(spec)
        spec.loader.exec_module(hook)
        hook.install()
except Exception:
    pass
"""

PTH_CONTENT = f"import sys; exec({_PTH_CODE!r})\n"
"""The ``.pth`` file: one line, since site runs only lines that start with ``import``."""


class TorchvisionImportHook:
    """``sys.meta_path`` finder that answers only for ``torchvision``, with a loader that imports it fixed."""

    _tpsnet_plugin_torchvision_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or path is not None:
            return None
        try:
            import importlib.machinery

            real = self._find_real_spec(fullname, target)
            if real is None:  # not installed: let the import system say so
                return None
            spec = importlib.machinery.ModuleSpec(
                fullname, _FixingLoader(), origin=real.origin,
                is_package=real.submodule_search_locations is not None,
            )
            # Look like the real spec to code that only asks where torchvision is (importlib.util.find_spec).
            spec.submodule_search_locations = real.submodule_search_locations
            spec.has_location = real.has_location
            return spec
        except Exception:
            return None

    def _find_real_spec(self, fullname, target):
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or getattr(finder, _MARK, False) or find_spec is None:
                continue
            spec = find_spec(fullname, None, target)
            if spec is not None:
                return spec
        return None


class _FixingLoader:
    """Replaces the placeholder module the import system made with torchvision imported by the fix.

    ``exec_module`` leaves the real module in ``sys.modules``, which the import system then returns (its
    "module replaced itself in sys.modules" path), so the placeholder is never seen.
    """

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        uninstall()
        if sys.modules.get(module.__name__) is module:
            del sys.modules[module.__name__]
        _import_torchvision()


def _import_torchvision() -> None:
    import importlib

    compat = sys.modules.get(_COMPAT)
    if compat is not None:
        # The package is being imported and its fix is what asked for torchvision.
        compat.ensure_torchvision_importable()
    else:
        compat = _load_compat()
        if compat is not None:
            spec = compat.__spec__
            spec.loader.exec_module(compat)  # runs ensure_torchvision_importable()
    if "torchvision" not in sys.modules:
        # Absent or failed in a way the fix leaves alone (or the fix could not be found): the plain import
        # raises what it would have raised without the hook.
        importlib.import_module("torchvision")


def _load_compat():
    """``_torchvision_compat`` beside this file, not yet run; None when it cannot be found."""
    try:
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torchvision_compat.py")
        if not os.path.isfile(path):
            return None
        spec = importlib.util.spec_from_file_location(_COMPAT, path)
        return importlib.util.module_from_spec(spec)
    except Exception:
        return None


def install() -> bool:
    """Put the hook first on ``sys.meta_path``; False (nothing done) when torchvision is already imported or
    a hook is already there."""
    if "torchvision" in sys.modules or any(getattr(f, _MARK, False) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, TorchvisionImportHook())
    return True


def uninstall() -> None:
    """Take every such hook off ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, _MARK, False)]


def installed() -> bool:
    """Whether a hook is waiting on ``sys.meta_path`` (true from start-up until the first torchvision import)."""
    return any(getattr(f, _MARK, False) for f in sys.meta_path)
