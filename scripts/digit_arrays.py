"""Writing the embedded Digits arrays: where they go and how (byte-deterministic ``.npz``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tpsnet_plugin" / "data" / "digits_arrays"


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write named arrays as a compressed ``.npz`` with fixed zip metadata (byte-deterministic).

    Args:
        path: Output ``.npz`` file.
        **arrays: The arrays by name (``images``, ``labels``; ``mnist-m`` also stores ``source_index``).
    """
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
