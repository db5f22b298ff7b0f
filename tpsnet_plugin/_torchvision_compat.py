"""Make ``import torchvision`` work beside a CPU-only torch.

PyPI's torchvision wheel that pairs with torch 2.13 is a CUDA build. Next to the CPU build of torch,
its ``_meta_registrations`` module registers fake kernels for C++ operators that were never loaded
and raises ``RuntimeError: operator torchvision::nms does not exist``. timm and open_clip both
import torchvision, so this module is imported by the package before either of them.

The fix drops the half-imported torchvision modules, stands an empty module in for
``torchvision._meta_registrations`` (only needed for ``torch.compile`` of torchvision ops) and
imports again. Where torchvision imports normally, nothing is changed.

This is the one place the fix lives. A program that imports torchvision before this package (the
``accelerate`` console script does, through timm) gets it from ``_startup_hook``, which a ``.pth``
file installs at start-up and which runs this module on the first ``import torchvision``.
"""

from __future__ import annotations

import sys
import types

_MISSING_OP_ERROR = "operator torchvision::"
_STUB = "torchvision._meta_registrations"
_STUB_MARK = "__tpsnet_plugin_stub__"


def ensure_torchvision_importable() -> bool:
    """Import torchvision, working around the CPU-torch / CUDA-torchvision mismatch.

    Returns:
        True when torchvision runs with the workaround (applied by this call or an earlier one, such as
        the start-up hook's), False when torchvision imported as is (or is absent).
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    except RuntimeError as error:
        if _MISSING_OP_ERROR not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        stub = types.ModuleType(_STUB)
        setattr(stub, _STUB_MARK, True)
        sys.modules[_STUB] = stub
        import torchvision  # noqa: F401,F811
    return getattr(sys.modules.get(_STUB), _STUB_MARK, False)


TORCHVISION_PATCHED = ensure_torchvision_importable()
