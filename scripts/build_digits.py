"""Rebuild the embedded Digits arrays shipped in ``tpsnet_plugin/data/digits_arrays``.

Four domains of the ten digits, all from data that ships in packages, so the default experiment
runs offline:

- ``handwritten-uci``: scikit-learn's ``load_digits`` (UCI optdigits, 1797 images of 8x8);
- ``handwritten-mnist``: OpenCV's ``digits.png`` sample (Debian ``opencv-doc``), 5000 digits of
  20x20;
- ``printed``: '0'-'9' rendered from the fonts of matplotlib and Debian font packages;
- ``handwriting-fonts``: '0'-'9' rendered from handwriting-style fonts of Debian packages.

Every image is normalised the same way (white digit on black, cropped to its bounding box, padded
to a square, resized into a 20x20 box centred in 28x28, MNIST style) and each domain is saved as
one compressed ``.npz`` (``images`` uint8 Nx28x28, ``labels`` int64 N). The build is
deterministic: sorted font lists, seeds derived from the font file name, fixed zip timestamps, so
a rebuild on a machine with the same packages gives the same bytes.

Usage::

    python -m scripts.build_digits [--out DIR] [--no-mnist-m]
"""

from __future__ import annotations

import argparse
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scripts import mnist_m
from scripts.digit_arrays import DEFAULT_OUT, save_arrays

IMAGE_SIZE = 28
BOX_SIZE = 20  # MNIST convention: the digit fills a 20x20 box centred in 28x28
FONT_SIZE = 64
CANVAS_SIZE = 160  # room for a FONT_SIZE glyph rotated and stretched
BBOX_THRESHOLD = 0.1  # a pixel belongs to the digit when above this fraction of the image maximum
SEED = 0

OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
DEBIAN_FONTS = Path("/usr/share/fonts")

# Font folders, with the Debian package that installs each one (for errors and the provenance note).
PRINTED_FONT_DIRS = {
    "truetype/dejavu": "fonts-dejavu-core, fonts-dejavu-extra",
    "truetype/liberation": "fonts-liberation",
    "truetype/freefont": "fonts-freefont-ttf",
    "opentype/urw-base35": "fonts-urw-base35",
}
HANDWRITING_FONT_DIRS = {
    "truetype/fifthhorseman": "fonts-dkg-handwriting",
    "truetype/breip": "fonts-breip",
    "opentype/bwht": "fonts-bwht",
    "truetype/femkeklaver": "fonts-femkeklaver",
    "truetype/humor-sans": "fonts-humor-sans",
    "truetype/rufscript": "fonts-rufscript",
    "truetype/sjfonts": "fonts-sjfonts",
    "opentype/comic-neue": "fonts-comic-neue",
    "opentype/dancingscript": "fonts-dancingscript",
}
_PACKAGES = sorted({package.strip() for packages in (*PRINTED_FONT_DIRS.values(),
                                                     *HANDWRITING_FONT_DIRS.values())
                    for package in packages.split(",")})
# Symbol, math and fallback fonts: their digit code points map to other shapes (Dingbats, old-style
# or placeholder glyphs) or to math variants, so they are not "printed digits".
EXCLUDED_FONTS = re.compile(
    r"math|symbol|dingbat|d050000l|last ?resort|mathjax|^cm(ex|sy|mi)10$|stixnonuni|stixsiz",
    re.IGNORECASE,
)
# Renders per font and digit; the first one is unaugmented. The handwriting fonts are few, so
# they get more renders to reach a few thousand images too.
RENDERS = {"printed": 5, "handwriting-fonts": 10}
MAX_ROTATION_DEG = 10.0
STRETCH_RANGE = (0.8, 1.2)  # horizontal scale relative to vertical
MAX_STROKE = 3  # extra outline width in pixels at FONT_SIZE, thickens the strokes


@dataclass(frozen=True)
class FontSource:
    """One font file used for rendering.

    Args:
        path: Font file.
        label: Machine-independent name (folder under /usr/share/fonts, or ``matplotlib``, then
            the file name); seeds the renders.
        name: Family and style from the font's name table.
        package: Debian package or Python package that ships the file.
    """

    path: Path
    label: str
    name: str
    package: str


def normalise_digit(image: np.ndarray) -> np.ndarray:
    """Crop, square-pad and resize one white-on-black digit the way every domain is stored.

    Args:
        image: 2-D array, digit bright on a zero background, any numeric dtype and range.

    Returns:
        uint8 array IMAGE_SIZE x IMAGE_SIZE, the digit resized (aspect kept) into a BOX_SIZE box
        centred in the image, maximum stretched to 255.
    """
    image = np.asarray(image, dtype=np.float64)
    peak = image.max()
    if peak <= 0:
        raise ValueError("empty digit image (no pixel above zero)")
    image = image / peak * 255.0
    rows = np.flatnonzero((image > BBOX_THRESHOLD * 255.0).any(axis=1))
    cols = np.flatnonzero((image > BBOX_THRESHOLD * 255.0).any(axis=0))
    crop = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    side = max(height, width)
    square = np.zeros((side, side))
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = crop
    pil = Image.fromarray(np.round(square).astype(np.uint8))
    box = np.asarray(pil.resize((BOX_SIZE, BOX_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    offset = (IMAGE_SIZE - BOX_SIZE) // 2
    out[offset:offset + BOX_SIZE, offset:offset + BOX_SIZE] = box
    return np.round(out / out.max() * 255.0).astype(np.uint8)


def build_handwritten_uci() -> tuple[np.ndarray, np.ndarray]:
    """The ``handwritten-uci`` domain from scikit-learn's ``load_digits``.

    Returns:
        ``(images, labels)``: uint8 Nx28x28 and int64 N, in the order of ``load_digits``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([normalise_digit(image) for image in digits.images])
    return images, digits.target.astype(np.int64)


def build_handwritten_mnist(path: Path = OPENCV_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """The ``handwritten-mnist`` domain from OpenCV's ``digits.png`` sample.

    Args:
        path: The sample image: 2000x1000 grid of 20x20 cells, 100 per row; class = row // 5.

    Returns:
        ``(images, labels)``: uint8 5000x28x28 and int64 5000, in row-major cell order.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the Debian package opencv-doc")
    sheet = np.asarray(Image.open(path).convert("L"))
    cell = 20
    rows, cols = sheet.shape[0] // cell, sheet.shape[1] // cell
    images, labels = [], []
    for r in range(rows):
        for c in range(cols):
            images.append(normalise_digit(sheet[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]))
            labels.append(r // 5)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _render(font: ImageFont.FreeTypeFont, text: str, stroke: int = 0) -> np.ndarray:
    canvas = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE))
    centre = CANVAS_SIZE / 2
    ImageDraw.Draw(canvas).text((centre, centre), text, fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    return np.asarray(canvas)


def has_all_digits(path: Path) -> bool:
    """Whether a font draws a real glyph for each of '0'-'9'.

    A digit counts when the font's cmap maps it and its render is non-empty and differs from the
    render of a code point no font defines (the ``.notdef`` box).

    Args:
        path: Font file.
    """
    from fontTools.ttLib import TTFont

    cmap = TTFont(path, lazy=True).getBestCmap() or {}
    font = ImageFont.truetype(str(path), FONT_SIZE)
    missing = _render(font, "\U0010FFFD")
    for digit in "0123456789":
        if ord(digit) not in cmap:
            return False
        glyph = _render(font, digit)
        if not glyph.any() or np.array_equal(glyph, missing):
            return False
    return True


def find_fonts(folders: dict[Path, tuple[str, str]]) -> tuple[list[FontSource], list[str]]:
    """Collect the usable fonts of some folders, sorted, without duplicate family/style names.

    Args:
        folders: Font folder -> (label prefix, package that ships it); searched in this order,
            files sorted by name.

    Returns:
        ``(fonts, skipped)``: fonts to render, and one ``"label: reason"`` line per skipped file.
    """
    fonts, skipped, seen = [], [], set()
    for folder, (prefix, package) in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"font folder {folder} not found: install {package}")
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".ttf", ".otf")):
            label = f"{prefix}/{path.name}"
            family, style = ImageFont.truetype(str(path), FONT_SIZE).getname()
            name = f"{family} {style}"
            if EXCLUDED_FONTS.search(family) or EXCLUDED_FONTS.search(path.stem):
                skipped.append(f"{label}: symbol/math/fallback font")
            elif name in seen:
                skipped.append(f"{label}: duplicate of {name}")
            elif not has_all_digits(path):
                skipped.append(f"{label}: lacks a digit glyph")
            else:
                seen.add(name)
                fonts.append(FontSource(path, label, name, package))
    return fonts, skipped


def render_digit(font: FontSource, digit: int, render: int) -> np.ndarray:
    """Render one augmented digit and normalise it.

    Args:
        font: Font to draw with.
        digit: 0-9.
        render: Render number; 0 is the plain glyph, others draw a rotation, a horizontal stretch
            and a stroke width from a generator seeded by (font label, digit, render).

    Returns:
        uint8 28x28 image (see :func:`normalise_digit`).
    """
    rng = np.random.default_rng([SEED, zlib.crc32(font.label.encode()), digit, render])
    angle, stretch, stroke = 0.0, 1.0, 0
    if render:
        angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        stretch = rng.uniform(*STRETCH_RANGE)
        stroke = int(rng.integers(0, MAX_STROKE + 1))
    pil_font = ImageFont.truetype(str(font.path), FONT_SIZE)
    image = Image.fromarray(_render(pil_font, str(digit), stroke))
    image = image.resize((round(CANVAS_SIZE * stretch), CANVAS_SIZE), Image.Resampling.BILINEAR)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    return normalise_digit(np.asarray(image))


def build_font_domain(fonts: list[FontSource], renders: int) -> tuple[np.ndarray, np.ndarray]:
    """Render '0'-'9' from each font ``renders`` times.

    Args:
        fonts: Fonts, in the order the images are stored (font, then digit, then render).
        renders: Images per font and digit.

    Returns:
        ``(images, labels)``: uint8 Nx28x28 and int64 N with N = len(fonts) * 10 * renders.
    """
    images, labels = [], []
    for font in fonts:
        for digit in range(10):
            for render in range(renders):
                images.append(render_digit(font, digit, render))
                labels.append(digit)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def save_domain(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one domain's ``images`` (uint8 Nx28x28) and ``labels`` (int64 N) with :func:`save_arrays`."""
    save_arrays(path, images=images, labels=labels)


def _versions() -> str:
    import matplotlib
    import sklearn
    from PIL import __version__ as pillow_version
    from PIL import features

    return (f"numpy {np.__version__}, Pillow {pillow_version} (FreeType "
            f"{features.version('freetype2')}), scikit-learn {sklearn.__version__}, "
            f"matplotlib {matplotlib.__version__}")


def _font_table(fonts: list[FontSource]) -> str:
    lines = ["| file | font | package |", "|---|---|---|"]
    lines += [f"| `{font.label}` | {font.name} | {font.package} |" for font in fonts]
    return "\n".join(lines)


def write_provenance(path: Path, counts: dict[str, int], fonts: dict[str, list[FontSource]],
                     skipped: list[str]) -> None:
    """Write ``PROVENANCE.md``: sources, counts, licences, rebuild command.

    Args:
        path: Output file.
        counts: Images per domain.
        fonts: Fonts used per font-rendered domain.
        skipped: ``"label: reason"`` for each font file left out.
    """
    count_rows = "\n".join(f"| {name} | {count} |" for name, count in counts.items())
    skipped_rows = "\n".join(f"- `{line.split(': ', 1)[0]}`: {line.split(': ', 1)[1]}"
                             for line in skipped)
    text = f"""# Digits: provenance and licences

Four domains of the digits 0-9, built by `scripts/build_digits.py` from data that ships in
Python and Debian packages, so the default experiment runs offline. Each domain is one
`<domain>.npz` with `images` (uint8, N x 28 x 28, white digit on black) and `labels` (int64, N).

| domain | images |
|---|---|
{count_rows}

## Normalisation (all domains)
Intensities scaled so the maximum is 255; crop to the bounding box of the pixels above
{BBOX_THRESHOLD:.0%} of the maximum; zero-pad to a square (aspect kept, digit centred);
bilinear resize to {BOX_SIZE}x{BOX_SIZE}; centre in {IMAGE_SIZE}x{IMAGE_SIZE} (MNIST
convention); maximum stretched to 255 again.

## Sources
- **handwritten-uci**: scikit-learn `sklearn.datasets.load_digits`, the test part of the UCI
  "Optical Recognition of Handwritten Digits" data set (optdigits; E. Alpaydin, C. Kaynak, 1998),
  1797 images of 8x8 with values 0-16, stored in `load_digits` order.
  Licence: CC BY 4.0 (UCI Machine Learning Repository).
- **handwritten-mnist**: OpenCV sample `samples/data/digits.png`, installed by the Debian package
  `opencv-doc` as `/usr/share/doc/opencv-doc/examples/data/digits.png`: a 2000x1000 sheet of
  5000 MNIST-style 20x20 digits, 100 per row; rows 5k..5k+4 hold digit k. Stored in row-major cell
  order. Licence: OpenCV's, Apache-2.0 AND BSD-3-Clause (see `/usr/share/doc/opencv-doc/copyright`).
- **printed** and **handwriting-fonts**: **rendered glyph bitmaps** of the characters '0'-'9'
  drawn with Pillow's `ImageFont` (FreeType) at {FONT_SIZE} px from the font files listed
  below; no font file is redistributed, only these small bitmaps. Per font and digit, render 0
  is the plain glyph; the others add a rotation in +-{MAX_ROTATION_DEG:g} degrees, a horizontal
  stretch in {STRETCH_RANGE} and an outline of 0-{MAX_STROKE} px (thicker strokes), drawn from a
  numpy generator seeded by (font file label, digit, render). Renders per font and digit:
  printed {RENDERS["printed"]}, handwriting-fonts {RENDERS["handwriting-fonts"]}. Stored font by
  font, then digit, then render. Symbol, math and fallback fonts and fonts without all ten digit
  glyphs are skipped, as are files repeating a family and style already used.

## Font licences
- DejaVu (`fonts-dejavu-core`, `fonts-dejavu-extra`; also in matplotlib): Bitstream Vera licence
  plus DejaVu changes in the public domain.
- STIX (matplotlib `mpl-data/fonts/ttf`): SIL Open Font License 1.1 (matplotlib `LICENSE_STIX`).
- Computer Modern, BaKoMa TrueType versions (matplotlib `cm*.ttf`): BaKoMa licence, free
  redistribution (matplotlib `LICENSE_BAKOMA`).
- Liberation (`fonts-liberation`, 1.07): GPL-2 with the font embedding exception.
- GNU FreeFont (`fonts-freefont-ttf`): GPL-3+ with the font special exception.
- URW base35 (`fonts-urw-base35`): AGPL-3 with the font exception.
- dkg-handwriting (`fonts-dkg-handwriting`): GPL-3+ (font source also OFL-1.1).
- Breip (`fonts-breip`): SIL OFL 1.0.
- Because We Had To, "BWHT" (`fonts-bwht`, Red Hat): SIL OFL 1.1.
- Femke Klaver (`fonts-femkeklaver`): CC BY-SA 3.0.
- Humor Sans (`fonts-humor-sans`): SIL OFL 1.1.
- Rufscript (`fonts-rufscript`): GPL-3+ with the font exception.
- SJFonts Delphine, Steve Hand (`fonts-sjfonts`): GPL-2 with the font embedding exception.
- Comic Neue (`fonts-comic-neue`): SIL OFL 1.1.
- Dancing Script (`fonts-dancingscript`): SIL OFL 1.1.

Full texts: `/usr/share/doc/<package>/copyright` on Debian, matplotlib's `LICENSE` folder.

## Fonts used: printed
{_font_table(fonts["printed"])}

## Fonts used: handwriting-fonts
{_font_table(fonts["handwriting-fonts"])}

## Font files skipped
{skipped_rows}

## Rebuild
Install the sources (Debian/Ubuntu), with scikit-learn, matplotlib, Pillow and fontTools in Python:

    apt-get install opencv-doc {" ".join(_PACKAGES)}

then run

    python -m scripts.build_digits            # writes tpsnet_plugin/data/digits_arrays/
    python -m scripts.build_digits --out DIR  # elsewhere

The build is deterministic: with the same package versions it reproduces these files byte for
byte. These files were built with {_versions()}.
"""
    path.write_text(text)


def _debian_font_dirs(folders: dict[str, str]) -> dict[Path, tuple[str, str]]:
    return {DEBIAN_FONTS / folder: (folder, package) for folder, package in folders.items()}


def main(argv: list[str] | None = None) -> None:
    """Build every domain into ``--out`` and print a summary.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-mnist-m", action="store_true",
                        help="skip the RGB mnist-m domain (scripts/mnist_m.py, fetches photo packages)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    # Debian folders first: they hold more DejaVu styles than matplotlib's copy, which then only
    # adds STIX and Computer Modern.
    printed_dirs = _debian_font_dirs(PRINTED_FONT_DIRS)
    printed_dirs[Path(matplotlib.get_data_path()) / "fonts" / "ttf"] = ("matplotlib", "matplotlib")
    printed_fonts, skipped_printed = find_fonts(printed_dirs)
    handwriting_fonts, skipped_handwriting = find_fonts(_debian_font_dirs(HANDWRITING_FONT_DIRS))
    fonts = {"printed": printed_fonts, "handwriting-fonts": handwriting_fonts}

    builders = {
        "handwritten-uci": build_handwritten_uci,
        "handwritten-mnist": build_handwritten_mnist,
        "printed": lambda: build_font_domain(printed_fonts, RENDERS["printed"]),
        "handwriting-fonts": lambda: build_font_domain(handwriting_fonts,
                                                       RENDERS["handwriting-fonts"]),
    }
    counts = {}
    for name, build in builders.items():
        images, labels = build()
        save_domain(args.out / f"{name}.npz", images, labels)
        counts[name] = len(labels)
        size = os.path.getsize(args.out / f"{name}.npz")
        print(f"{name}: {len(labels)} images, per class {np.bincount(labels).tolist()}, "
              f"{size / 1e6:.2f} MB")
    for domain, used in fonts.items():
        print(f"{domain}: {len(used)} fonts: " + ", ".join(font.name for font in used))
    skipped = skipped_printed + skipped_handwriting
    print(f"skipped {len(skipped)} font files:\n  " + "\n  ".join(skipped))
    write_provenance(args.out / "PROVENANCE.md", counts, fonts, skipped)
    if not args.no_mnist_m:  # blends the handwritten-mnist just written; adds its PROVENANCE section
        mnist_m.write_domain(args.out, source=args.out / "handwritten-mnist.npz")


if __name__ == "__main__":
    main()
