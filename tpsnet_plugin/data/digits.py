"""Digits: the embedded, offline cross-domain data set (10 classes, 6 domains).

The arrays ship inside the package (``digits_arrays/<domain>.npz``, built by
``scripts/build_digits.py``; sources and licences in ``digits_arrays/PROVENANCE.md``). The
grayscale domains are white digits on black, 28x28, the digit centred in a 20x20 box; ``mnist-m``
is RGB (28x28x3): half of the ``handwritten-mnist`` digits blended into crops of photographs,
MNIST-M style (``scripts/mnist_m.py``).

Three domains hold the same handwritten digit instances (:data:`MNIST_INSTANCES`):

- ``handwritten-mnist``: all 5,000 digits of OpenCV's ``digits.png`` (500 per class, in class
  blocks), indices 0-4999 of its stored order.
- ``mnist-m``: blends of the odd-index ``handwritten-mnist`` digits only (2,500, 250 per class),
  in that order; its ``.npz`` stores the indices as ``source_index``.
- ``handwritten-mnist-half``: the even-index ``handwritten-mnist`` digits (2,500, 250 per class),
  a view of the ``handwritten-mnist`` array (no file of its own): exactly the instances
  ``mnist-m`` does not use.

So ``handwritten-mnist-half`` <-> ``mnist-m`` shares no digit instance, while
``handwritten-mnist`` <-> ``mnist-m`` shares 2,500 (:func:`shared_instances`): retrieval between
those can match the instance rather than the class.
"""

from __future__ import annotations

import difflib
import io
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

DOMAINS = ("handwritten-uci", "handwritten-mnist", "printed", "handwriting-fonts", "mnist-m",
           "handwritten-mnist-half")
CLASSES = tuple(str(digit) for digit in range(10))

HANDWRITTEN_MNIST_SIZE = 5000
# The handwritten-mnist digit instances each domain holds, as rows of the stored handwritten-mnist
# order (domains absent here hold none of them). Two domains share instances where these overlap.
MNIST_INSTANCES = {
    "handwritten-mnist": slice(None),  # all 5,000
    "mnist-m": slice(1, None, 2),  # blends of the odd indices (stored as its source_index)
    "handwritten-mnist-half": slice(0, None, 2),  # the even indices: none of mnist-m's
}
# Domains that are views of another domain's shipped array: name -> (stored domain, rows).
_VIEWS = {"handwritten-mnist-half": ("handwritten-mnist", MNIST_INSTANCES["handwritten-mnist-half"])}


def instance_indices(name: str) -> np.ndarray | None:
    """The ``handwritten-mnist`` indices of the digit instances a domain holds, in its order.

    Args:
        name: One of :data:`DOMAINS`.

    Returns:
        int64 array, one index per image, or None for a domain not built from ``handwritten-mnist``.
        For ``mnist-m`` the ``source_index`` stored in its ``.npz``.
    """
    _check_name(name)
    if name not in MNIST_INSTANCES:
        return None
    if name == "mnist-m":
        with np.load(io.BytesIO(_npz_bytes(name))) as arrays:
            return arrays["source_index"].astype(np.int64)
    return np.arange(HANDWRITTEN_MNIST_SIZE, dtype=np.int64)[MNIST_INSTANCES[name]]


def shared_instances(domains) -> list[tuple[str, str]]:
    """The pairs of ``domains`` that hold the same digit instances (see :data:`MNIST_INSTANCES`).

    Args:
        domains: Digits domain names (others are ignored).

    Returns:
        ``(a, b)`` pairs, in the order of ``domains``: e.g. ``[("handwritten-mnist", "mnist-m")]``
        for ``["handwritten-mnist", "mnist-m"]``, none for ``["handwritten-mnist-half", "mnist-m"]``.
    """
    names = list(dict.fromkeys(d for d in domains if d in MNIST_INSTANCES))
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if _shared_count(a, b)]


def _shared_count(a: str, b: str) -> int:
    rows = range(HANDWRITTEN_MNIST_SIZE)
    return len(set(rows[MNIST_INSTANCES[a]]) & set(rows[MNIST_INSTANCES[b]]))


def shared_instances_warning(domains) -> str | None:
    """A warning naming the pairs of ``domains`` that share digit instances, and the fix; else None."""
    pairs = shared_instances(domains)
    if not pairs:
        return None
    parts = []
    for a, b in pairs:
        if "mnist-m" in (a, b):
            fix = ("pair 'mnist-m' with 'handwritten-mnist-half' (the even-index digits, none of them "
                   "in mnist-m) instead of 'handwritten-mnist'")
        else:
            fix = "use one of them only ('handwritten-mnist-half' is half of 'handwritten-mnist')"
        parts.append(f"{a!r} and {b!r} hold {_shared_count(a, b)} of the same handwritten digit "
                     f"instances, so retrieval between them can match the instance rather than the "
                     f"class and overstate cross-domain precision: {fix}")
    return "Digits domains share digit instances: " + "; ".join(parts) + "."


def warn_shared_instances(domains, stacklevel: int = 2) -> None:
    """Emit :func:`shared_instances_warning` as a ``UserWarning`` when ``domains`` share instances.

    Args:
        domains: Digits domain names, e.g. a training config's ``data.domains``.
        stacklevel: As for :func:`warnings.warn` (2: the caller of this function).
    """
    message = shared_instances_warning(domains)
    if message:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def _check_name(name: str) -> None:
    if name not in DOMAINS:
        close = difflib.get_close_matches(str(name), DOMAINS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown Digits domain {name!r}; choose one of {DOMAINS}.{hint}")


def _npz_bytes(name: str) -> bytes:
    return resources.files(__package__).joinpath("digits_arrays", f"{name}.npz").read_bytes()


def load_domain(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one Digits domain from the arrays shipped with the package.

    ``handwritten-mnist-half`` is a view: the even-index rows of the ``handwritten-mnist`` array.

    Args:
        name: One of :data:`DOMAINS`.

    Returns:
        ``(images, labels)``: uint8 array N x 28 x 28 (white digit on black), or N x 28 x 28 x 3
        for an RGB domain (``mnist-m``), and int64 array N of class indices into :data:`CLASSES`.

    Raises:
        ValueError: ``name`` is not a Digits domain.
    """
    _check_name(name)
    if name in _VIEWS:
        stored, rows = _VIEWS[name]
        images, labels = load_domain(stored)
        return np.ascontiguousarray(images[rows]), np.ascontiguousarray(labels[rows])
    with np.load(io.BytesIO(_npz_bytes(name))) as arrays:
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
        domain: One of :data:`DOMAINS` (``handwritten-mnist-half`` included).
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
            raise DataError(
                f"channels must be 1 (gray) or 3 (RGB; gray domains replicated), got {channels}")
        if image_size < 1:
            raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
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
