"""Make ``import torchvision`` work beside a CPU-only torch.

PyPI's torchvision wheel that pairs with torch 2.13 is a CUDA build. Next to the CPU build of torch,
its ``_meta_registrations`` module registers fake kernels for C++ operators that were never loaded
and raises ``RuntimeError: operator torchvision::nms does not exist``. timm and open_clip both
import torchvision, so this module is imported by the package before either of them.

The fix drops the half-imported torchvision modules, stands an empty module in for
``torchvision._meta_registrations`` (only needed for ``torch.compile`` of torchvision ops) and
imports again. Where torchvision imports normally, nothing is changed.
"""

from __future__ import annotations

import sys
import types

_MISSING_OP_ERROR = "operator torchvision::"


def ensure_torchvision_importable() -> bool:
    """Import torchvision, working around the CPU-torch / CUDA-torchvision mismatch.

    Returns:
        True when the workaround was applied, False when torchvision imported as is (or is absent).
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
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
        import torchvision  # noqa: F401,F811

        return True
    return False


TORCHVISION_PATCHED = ensure_torchvision_importable()
