"""Coercing the arrays callers pass (tensors, arrays, sequences) to NumPy."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(array, dtype=None) -> np.ndarray:
    """``array`` (tensor on any device, array or sequence) as a NumPy array, of ``dtype`` when given."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)


def as_int_array(values, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; a clear error naming ``name`` for another shape or dtype.

    Raises:
        ValueError: Not one-dimensional, or not integers (floats are refused, not truncated).
    """
    values = to_numpy(values)
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise ValueError(f"{name} must be a 1-D sequence of ints, got shape {values.shape} and dtype {values.dtype}")
    return values.astype(np.int64)
