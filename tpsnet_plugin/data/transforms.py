"""Default image transform: PIL image -> resized float tensor in [0, 1].

Normalisation (ImageNet or CLIP mean/std) is not done here: the models normalise internally, so
one dataset serves backbones with different statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .image_io import to_rgb


def _resize_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Convert to RGB, resize to ``size`` = (H, W) and return a 3×H×W float tensor in [0, 1]."""
    if image.mode != "RGB":
        image = to_rgb(image)  # 16-bit and float images by their range, alpha on white
    # PIL scales the bilinear filter support with the reduction factor, i.e. it antialiases.
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def default_transform(image_size: int | tuple[int, int]) -> Callable[[Image.Image], torch.Tensor]:
    """Build the default transform used by the folder datasets.

    Args:
        image_size: Output size: an int S for S×S, or a pair (H, W).

    Returns:
        A picklable callable mapping a PIL image (any mode) to a float tensor of shape
        (3, H, W) with values in [0, 1], resized with antialiased bilinear interpolation.
    """
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(
            f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}"
        )
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    # functools.partial of a module-level function pickles, so DataLoader workers can spawn.
    return functools.partial(_resize_to_tensor, size=size)
