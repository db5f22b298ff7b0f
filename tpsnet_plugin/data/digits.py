"""Digits: the embedded, offline cross-domain data set (10 classes, 5 domains).

The arrays ship inside the package (``digits_arrays/<domain>.npz``, built by
``scripts/build_digits.py``; sources and licences in ``digits_arrays/PROVENANCE.md``). The
grayscale domains are white digits on black, 28x28, the digit centred in a 20x20 box; ``mnist-m``
is RGB (28x28x3): the ``handwritten-mnist`` digits blended into crops of photographs, MNIST-M style
(``scripts/mnist_m.py``).
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..evaluation.baseline import raw_pixel_features as _gray_pixel_features

DOMAINS = ("handwritten-uci", "handwritten-mnist", "printed", "handwriting-fonts", "mnist-m")
CLASSES = tuple(str(digit) for digit in range(10))


def load_domain(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one Digits domain from the arrays shipped with the package.

    Args:
        name: One of :data:`DOMAINS`.

    Returns:
        ``(images, labels)``: uint8 array N x 28 x 28 (white digit on black), or N x 28 x 28 x 3
        for an RGB domain (``mnist-m``), and int64 array N of class indices into :data:`CLASSES`.

    Raises:
        ValueError: ``name`` is not a Digits domain.
    """
    if name not in DOMAINS:
        close = difflib.get_close_matches(str(name), DOMAINS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown Digits domain {name!r}; choose one of {DOMAINS}.{hint}")
    data = resources.files(__package__).joinpath("digits_arrays", f"{name}.npz").read_bytes()
    with np.load(io.BytesIO(data)) as arrays:
        return arrays["images"], arrays["labels"].astype(np.int64)


class DigitsDomain(Dataset):
    """One Digits domain as a map-style dataset yielding ``(image, label, index)``.

    By default an image is a float32 tensor ``channels x image_size x image_size`` in [0, 1]:
    the stored 28x28 digit resized bilinearly (antialiased when shrinking). A grayscale domain is
    replicated over 3 channels; an RGB domain (``mnist-m``) keeps its colours, and with
    ``channels=1`` it is turned gray by the mean of its channels (as the raw-pixel baseline does).
    With ``transform``, the image is instead a PIL image resized to ``image_size`` (mode ``"RGB"``
    for 3 channels, ``"L"`` for 1; for an RGB domain the channel mean rounded to uint8) and the
    item holds ``transform(image)``.

    Args:
        domain: One of :data:`DOMAINS`.
        image_size: Side of the yielded images in pixels.
        channels: 3 (RGB, for ImageNet/CLIP backbones) or 1 (gray).
        transform: Optional callable on the PIL image, e.g. a torchvision/timm transform.

    Attributes:
        domain: The domain name.
        labels: int64 numpy array of class indices, one per image.
        classes: Class names, ``list(CLASSES)``.
        rgb: Whether the domain is stored in colour (N x 28 x 28 x 3).
    """

    def __init__(self, domain: str, image_size: int = 32, channels: int = 3,
                 transform: Callable | None = None):
        if channels not in (1, 3):
            raise ValueError(
                f"channels must be 1 (gray) or 3 (RGB; gray domains replicated), got {channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        self.domain = domain
        self.image_size = image_size
        self.channels = channels
        self.transform = transform
        self._images, self.labels = load_domain(domain)
        self.classes = list(CLASSES)
        self.rgb = self._images.ndim == 4  # stored N x H x W x 3
        self._resized: torch.Tensor | None = None  # N x (1 or 3) x S x S, built on first use

    def __len__(self) -> int:
        return len(self.labels)

    def _stored_tensor(self) -> torch.Tensor:
        # Resize the whole domain once: items and images_tensor() then agree exactly.
        if self._resized is None:
            images = torch.from_numpy(self._images).float().div_(255.0)
            if self.rgb:
                images = images.permute(0, 3, 1, 2)
                if self.channels == 1:
                    images = images.mean(1, keepdim=True)
            else:
                images = images.unsqueeze(1)
            if images.shape[-1] != self.image_size:
                images = F.interpolate(images, size=(self.image_size, self.image_size),
                                       mode="bilinear", align_corners=False, antialias=True)
            self._resized = images.clamp_(0.0, 1.0)
        return self._resized

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        label = int(self.labels[index])
        if self.transform is None:
            image = self._stored_tensor()[index].expand(self.channels, -1, -1).clone()
            return image, label, index
        stored = self._images[index]
        if self.rgb and self.channels == 1:
            stored = np.round(stored.mean(axis=2)).astype(np.uint8)
        image = Image.fromarray(stored)  # uint8 2-D: mode "L"; H x W x 3: mode "RGB"
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if self.channels == 3:
            image = image.convert("RGB")
        return self.transform(image), label, index

    def images_tensor(self) -> torch.Tensor:
        """The whole domain as one tensor, for fast in-memory batched training.

        Returns:
            float32 tensor N x channels x image_size x image_size in [0, 1], equal to stacking the
            default (no ``transform``) items.
        """
        return self._stored_tensor().expand(-1, self.channels, -1, -1).clone()


def raw_pixel_features(domain: str, image_size: int = 28) -> np.ndarray:
    """Flattened gray pixels of a domain, for the raw-pixel retrieval baseline.

    An RGB domain is turned gray by the mean of its channels (see :class:`DigitsDomain`).

    Args:
        domain: One of :data:`DOMAINS`.
        image_size: Side the images are resized to before flattening.

    Returns:
        float32 array N x (image_size * image_size), values in [0, 1] (not normalised).
    """
    images = DigitsDomain(domain, image_size=image_size, channels=1).images_tensor()
    return _gray_pixel_features(images, normalize=False).numpy()
