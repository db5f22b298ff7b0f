"""The one place image files are decoded: any PIL mode to an 8-bit RGB image, or a clear error.

Images are turned upright by their EXIF orientation first (phone photos are stored sideways with
a tag saying how to turn them), as a viewer shows them.

PIL's own ``convert("RGB")`` silently ruins images that are not 8 bit: it clips 16-bit values
to 255 (a 16-bit PNG comes out almost white) and turns float images into black (NaN -> 0, and
values in [0, 1] round to 0 or 1). :func:`load_rgb` maps them by their range instead:

- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...) convert to RGB;
- transparency (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency) is composited
  on white, the usual background of object photos and clip art;
- 16-bit integer images (``I;16*``, and ``I`` with values in 0..65535) are scaled by their
  full range: ``value / 257``, so 65535 becomes 255;
- 32-bit float images (``F``): finite values in [0, 1] are scaled by 255, finite values in
  [0, 255] are kept; anything else (NaN, inf, negative or larger values) is refused with an
  :class:`ImageReadError` naming the file: convert it to an 8-bit PNG or JPEG.

Every error raised here is an :class:`ImageReadError` (an ``OSError``) naming the file.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from ..errors import TPSNetError

# PIL modes whose samples are not 8-bit unsigned integers.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FIX = "convert it to an 8-bit PNG or JPEG"


class ImageReadError(TPSNetError, OSError):
    """An image file that cannot be read or cannot be mapped to 8-bit RGB; names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


def _unsupported(path, mode: str, values: np.ndarray, accepted: str) -> ImageReadError:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size < values.size:
        what = f"{values.size - finite.size} NaN/inf value(s)"
    else:
        what = f"values in [{finite.min():g}, {finite.max():g}]"
    return ImageReadError(
        path, f"mode {mode!r} image with {what}; only {accepted} can be mapped to 8-bit colours "
              f"without guessing: {_FIX}"
    )


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def _high_depth_to_rgb(image: Image.Image, path) -> Image.Image:
    """16-bit integer, 32-bit integer or float single-channel image -> 8-bit RGB."""
    mode = image.mode
    values = np.asarray(image)
    if values.size == 0:
        return Image.new("RGB", image.size)
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise _unsupported(path, mode, values, "integer values in 0..65535 (16 bit)")
        return _gray_to_rgb(values.astype(np.float64) / 257.0)
    if mode == "F":
        if not np.isfinite(values).all():
            raise _unsupported(path, mode, values, "finite values in [0, 1] or [0, 255]")
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            return _gray_to_rgb(values.astype(np.float64) * 255.0)
        if lo >= 0.0 and hi <= 255.0:
            return _gray_to_rgb(values.astype(np.float64))
        raise _unsupported(path, mode, values, "finite values in [0, 1] or [0, 255]")
    raise ImageReadError(path, f"unsupported image mode {mode!r}: {_FIX}")


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode == "La":  # PIL converts premultiplied L+alpha only through LA
        image = image.convert("LA")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
    alpha = rgba[..., 3:]
    # Exact rounding of c * a / 255 + 255 * (1 - a / 255) in integers.
    rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def to_rgb(image: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """Map a decoded PIL image of any mode to 8-bit RGB (see the module docstring).

    Args:
        image: A loaded PIL image.
        path: The file it came from, for error messages.

    Returns:
        A new RGB image.

    Raises:
        ImageReadError: The values cannot be mapped to 8 bit without guessing (NaN/inf or an
            unusual range) or the mode is not supported.
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_to_rgb(image, path)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageReadError(path, f"unsupported image mode {mode!r} ({error}): {_FIX}") from error


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Fully decode an image file (so truncated files fail here) and return it upright as 8-bit RGB.

    The EXIF orientation tag (JPEG, PNG, TIFF, WebP) is applied, so a phone photo stored sideways
    comes out as it is shown.

    Args:
        path: The image file.

    Returns:
        An upright RGB PIL image (see the module docstring for how each mode is mapped).

    Raises:
        ImageReadError: The file cannot be decoded, or its values cannot be mapped to 8 bit;
            the message names the file and what to do.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image), path)
    except ImageReadError:
        raise
    except Exception as error:  # any decoder failure (OSError, ValueError, SyntaxError, ...)
        raise ImageReadError(path, str(error) or type(error).__name__) from error


def check_image(path: str | os.PathLike) -> None:
    """Decode ``path`` once, as cheaply as possible, and raise if :func:`load_rgb` would fail.

    JPEGs are decoded at 1/8 scale (the whole stream is still read, so truncated or corrupt
    files fail); the range of 16-bit and float images is checked in full.

    Raises:
        ImageReadError: Same cases as :func:`load_rgb`.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
            if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
                _high_depth_to_rgb(image, path)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(path, str(error) or type(error).__name__) from error
