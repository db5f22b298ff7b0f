"""Step 3 of the icon corpus: one square RGB image at the corpus size, written as PNG."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from PIL import Image

__all__ = ["PNG_COMPRESS_LEVEL", "render_svg", "to_square_rgb", "write_png"]

PNG_COMPRESS_LEVEL = 9  # fixed PNG settings: the same pixels always give the same bytes


def to_square_rgb(image: Image.Image, size: int) -> Image.Image:
    """Composite on white, pad to a centred white square, resize once (Lanczos) to size x size.

    Args:
        image: Any PIL image (palette, grey, 16-bit, with or without alpha or tRNS).
        size: Output side in pixels.

    Returns:
        RGB image ``size`` x ``size``; not resized when the padded square already has that size.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        image = image.point(lambda value: value / 256).convert("L")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    width, height = rgb.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - width) // 2, (side - height) // 2))
        rgb = square
    if side != size:
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return rgb


def render_svg(path: Path, size: int, renderer: str | os.PathLike) -> Image.Image:
    """Render an SVG with ``rsvg-convert`` to fit size x size (aspect kept), as RGB on white."""
    command = [str(renderer), "--keep-aspect-ratio", "--width", str(size), "--height", str(size),
               "--format", "png", str(path)]
    result = subprocess.run(command, check=True, capture_output=True)
    with Image.open(io.BytesIO(result.stdout)) as image:
        # the longer side is size already (one pixel less at worst, then resized)
        return to_square_rgb(image, size)


def write_png(image: Image.Image, path: Path) -> None:
    """Save ``image`` as PNG at ``path`` (parents created) with the corpus's fixed settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
