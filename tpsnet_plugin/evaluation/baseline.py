"""The raw-pixel retrieval baseline: grayscale pixels as features, the floor every model must beat."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["raw_pixel_features"]

# Images converted per chunk: float copies of a whole data set can be many times its uint8 size.
_CHUNK = 1024


def raw_pixel_features(images, normalize: bool = True, max_size: int | None = None) -> torch.Tensor:
    """Grayscale pixel vectors of images, for cosine retrieval on raw pixels.

    The gray value of a pixel is the mean of its channels.

    Args:
        images: N×C×H×W tensor or array, uint8 (0-255) or floating point in [0, 1].
        normalize: L2-normalise each row. False keeps the gray values, in [0, 1].
        max_size: Average-pool larger images down to ``max_size``×``max_size`` first (None: keep the size).

    Returns:
        float32 tensor N×(H·W) on the device of ``images``.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
    if len(images) == 0:
        side = (min(images.shape[2], max_size), min(images.shape[3], max_size)) if max_size else images.shape[2:]
        return images.new_zeros((0, side[0] * side[1]), dtype=torch.float32)
    chunks = []
    resize = max_size is not None and (images.shape[2] > max_size or images.shape[3] > max_size)
    for chunk in images.split(_CHUNK):
        gray = chunk.float().mean(1, keepdim=True)
        if resize:
            gray = F.interpolate(gray, size=(max_size, max_size), mode="area")
        gray = gray.flatten(1)
        if normalize:
            # uint8 is not rescaled first: the scale cancels in the normalisation
            chunks.append(F.normalize(gray, dim=1))
        else:
            chunks.append(gray.div_(255) if images.dtype == torch.uint8 else gray)
    return torch.cat(chunks)
