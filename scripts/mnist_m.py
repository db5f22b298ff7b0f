"""Build the ``mnist-m`` Digits domain: half of the handwritten-mnist digits blended into photographs.

The construction of MNIST-M (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015), on the project's own digits and photographs: for each
``handwritten-mnist`` image, a random square crop of a random photograph, at a random scale,
resized to 28x28 RGB; the output is ``|crop - digit|`` per channel, with the digit binarised to
0/255 and broadcast to the three channels. The digit shows as the photograph's colours inverted
inside the strokes, the background as the untouched photograph.

The crops are drawn for all 5,000 digits, but only the blends of the odd-index digits
(:data:`SOURCE_ROWS`; 2,500, 250 per class) are kept, their indices stored as ``source_index``
in ``mnist-m.npz``. The even-index digits, none of which is in ``mnist-m``, form the
``handwritten-mnist-half`` domain (a view of the ``handwritten-mnist`` array), so that
``handwritten-mnist-half`` <-> ``mnist-m`` holds no digit instance on both sides.

The photographs come from Debian wallpaper packages (:data:`PHOTOS`, an explicit list: the
packages also hold drawn, rendered and vector artwork, which is not used). ``apt-get download``
fetches the packages into a cache folder and ``dpkg-deb -x`` unpacks them there (helpers in
``scripts/debian_packages.py``); nothing is installed. The photos are used for this domain only.

Usage::

    python -m scripts.mnist_m [--out DIR] [--cache-dir DIR] [--source NPZ]

``scripts/build_digits.py`` calls :func:`write_domain` after its own domains, so a full rebuild
also rebuilds ``mnist-m`` from the freshly built ``handwritten-mnist``.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import debian_packages
from scripts.digit_arrays import DEFAULT_OUT, save_arrays

DOMAIN = "mnist-m"
SOURCE_DOMAIN = "handwritten-mnist"
SEED = 0
IMAGE_SIZE = 28
WORK_SIDE = 320  # photos are first resized to this short side (BSDS500, MNIST-M's source, is 481x321)
CROP_SIDES = (28, 56)  # crop side in pixels of the resized photo, uniform, both ends included
DIGIT_THRESHOLD = 128  # a digit pixel is ink (255) at or above this intensity, else background (0)
# The handwritten-mnist rows whose blends are kept: the odd indices. The even ones are the
# handwritten-mnist-half domain (tpsnet_plugin.data.digits.MNIST_INSTANCES holds both rules).
SOURCE_ROWS = slice(1, None, 2)
COMPLEMENT_DOMAIN = "handwritten-mnist-half"

PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers")
# Packages looked through for photographs and found to hold none (reported in the provenance).
# Versions and licences as inspected (Debian bookworm); these packages are not fetched by the build.
INSPECTED_WITHOUT_PHOTOS = {
    "gnome-backgrounds": "43.1-1 (GPL-2+ and CC BY-SA 2.0/3.0, CC BY 2.0 by image; the copyright "
                         "file has no machine-readable `License:` line): 3D renders and drawn "
                         "patterns (WebP) and SVG art only",
    "desktop-base": "12.0.6+nmu1~deb12u1 (GPL-2+; some files GPL-2, GPL-3+ or CC BY-SA 3.0): "
                    "the Debian themes' SVG vector art and their raster renders only",
}


@dataclass(frozen=True)
class Photo:
    """One photograph used for crops.

    Args:
        package: Debian package that ships it.
        path: Path inside the package's file tree.
        credit: Author(s), from the package's copyright file or the wallpaper's metadata.
        licence: Licence of the file.
    """

    package: str
    path: str
    credit: str
    licence: str


_MATE = "usr/share/backgrounds/mate/nature"
_PLASMA = "usr/share/wallpapers"
_PLASMA_LICENCE = "GPL-2+ (Debian copyright); LGPL-3 (wallpaper metadata)"
# The photographs, chosen by eye from every raster image of the packages: mate-backgrounds'
# nature/ folder (all photographs; abstract/ and desktop/ hold drawn or rendered art) and the
# photographic plasma wallpapers, each at its largest size (2560x1600; the others are drawn or
# rendered: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave,
# IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna).
PHOTOS = (
    Photo("mate-backgrounds", f"{_MATE}/Aqua.jpg", "Charles Barbin", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/Blinds.jpg", "Lennart Poettering, Andrea Cimitan",
          "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/Dune.jpg", "Marco Cogoni, Hylke Bons", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/FreshFlower.jpg", "Jens Ansorg", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/Garden.jpg", "Charles Barbin", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/GreenMeadow.jpg", "Timothy Schellhase, Lapo Calamandrei",
          "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/LadyBird.jpg", "Charles Barbin", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/RainDrops.jpg", "\"blackcombwhistler07\"", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/Storm.jpg", "Sergey Nazarov", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/TwoWings.jpg", "Charles Barbin, Hylke Bons", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/Wood.jpg", "Jean-François Fortin Tam", "GPL-2+"),
    Photo("mate-backgrounds", f"{_MATE}/YellowFlower.jpg", "Charles Barbin", "GPL-2+"),
    *(Photo("plasma-workspace-wallpapers", f"{_PLASMA}/{name}/contents/images/2560x1600.jpg",
            credit, _PLASMA_LICENCE)
      for name, credit in (
          ("BytheWater", "Maciej Wiklo"),
          ("ColdRipple", "Risto Saukonpää"),
          ("ColorfulCups", "Dmitri Popov"),
          ("DarkestHour", "Risto Saukonpää"),
          ("EveningGlow", "Ian Hex"),
          ("FallenLeaf", "Martin Klapetek"),
          ("Grey", "Sigi Sagi"),
          ("Kite", "Risto Saukonpää"),
          ("OneStandsOut", "Risto Saukonpää"),
          ("Path", "Risto Saukonpää"),
          ("summer_1am", "Risto Saukonpää"),
      )),
)

SECTION_BEGIN = "<!-- mnist-m: begin (written by scripts/mnist_m.py) -->"
SECTION_END = "<!-- mnist-m: end -->"


def default_cache_dir() -> Path:
    """``$TPSNET_CACHE/mnist-m`` when ``TPSNET_CACHE`` is set, else ``~/.cache/tpsnet_plugin/mnist-m``."""
    from tpsnet_plugin.data.icons import cache_dir

    return cache_dir(DOMAIN)


def _load_photo(path: Path) -> np.ndarray:
    """A photo as uint8 H x W x 3, resized (Lanczos) so its short side is at most WORK_SIDE."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = WORK_SIDE / min(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(image)


def build_mnist_m(digits: np.ndarray, photos: list[Path], seed: int = SEED) -> np.ndarray:
    """Blend each digit into a random crop of a random photograph, MNIST-M style.

    Each photo is resized so its short side is at most ``WORK_SIDE``. For digit ``i``, a generator
    seeded by ``seed`` draws a photo, a square crop side in ``CROP_SIDES`` (capped by the photo's
    short side) and a crop position; the crop is resized (bilinear) to the digit's size and the
    output is ``|crop - ink|`` per channel, ``ink`` being 255 where the digit is at least
    ``DIGIT_THRESHOLD`` and 0 elsewhere.

    Args:
        digits: uint8 N x H x W, white digits on black.
        photos: Photograph files (any format Pillow reads), in a fixed order.
        seed: Seed of the crop draws.

    Returns:
        uint8 N x H x W x 3.
    """
    digits = np.asarray(digits)
    if digits.ndim != 3 or digits.dtype != np.uint8:
        raise ValueError(f"digits must be uint8 N x H x W, got {digits.dtype} {digits.shape}")
    if not photos:
        raise ValueError("no photographs given")
    images = [_load_photo(Path(path)) for path in photos]
    height, width = digits.shape[1:]
    too_small = [str(p) for p, im in zip(photos, images) if min(im.shape[:2]) < max(height, width)]
    if too_small:
        raise ValueError(f"photos smaller than a {height}x{width} digit: {too_small}")
    count = len(digits)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(images), size=count)
    sides = rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1, size=count)
    tops, lefts = rng.random(count), rng.random(count)
    ink = np.where(digits >= DIGIT_THRESHOLD, 255, 0).astype(np.int16)
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        photo = images[which[i]]
        side = int(min(sides[i], *photo.shape[:2]))
        top = int(tops[i] * (photo.shape[0] - side + 1))
        left = int(lefts[i] * (photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        if side != height or side != width:
            crop = crop.resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.abs(np.asarray(crop, dtype=np.int16) - ink[i][:, :, None]).astype(np.uint8)
    return out


def fetch_photos(cache: Path, update: bool = True) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """Download and unpack the photo packages into ``cache``; locate :data:`PHOTOS`.

    Args:
        cache: ``.deb`` files go to ``cache/debs``, unpacked trees to ``cache/packages/<package>``.
        update: Let ``apt-get update`` run (once) before fetching a missing package.

    Returns:
        ``(paths, packages)``: the photo files in :data:`PHOTOS` order, and per package its
        ``version`` and ``licence`` (first ``License:`` of its Debian copyright file).
    """
    debs = debian_packages.download_packages(list(PACKAGES), Path(cache) / "debs", update=update)
    roots, packages = {}, {}
    for package, deb in debs.items():
        roots[package] = debian_packages.extract_package(deb, Path(cache) / "packages" / package)
        packages[package] = {"version": debian_packages.deb_field(deb, "Version"),
                             "licence": debian_packages.package_licence(roots[package], package)}
    paths = [roots[photo.package] / photo.path for photo in PHOTOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"photos missing from the unpacked packages: {missing}")
    return paths, packages


def source_rows(count: int) -> np.ndarray:
    """The source digits kept out of ``count``: int64 indices, the odd ones (:data:`SOURCE_ROWS`)."""
    return np.arange(count, dtype=np.int64)[SOURCE_ROWS]


def provenance_section(count: int, packages: dict[str, dict[str, str]], source_count: int = 5000) -> str:
    """The ``mnist-m`` section of ``PROVENANCE.md`` (between :data:`SECTION_BEGIN`/``END``).

    Args:
        count: Images in ``mnist-m``.
        packages: Per photo package, its ``version`` and ``licence``.
        source_count: Digits in ``handwritten-mnist`` (crops are drawn for all of them).
    """
    package_rows = "\n".join(f"| {name} | {info['version']} | {info['licence']} |"
                             for name, info in packages.items())
    photo_rows = "\n".join(f"| `{photo.path}` | {photo.package} | {photo.credit} | {photo.licence} |"
                           for photo in PHOTOS)
    inspected = "\n".join(f"- `{name}` {note}" for name, note in INSPECTED_WITHOUT_PHOTOS.items())
    return f"""{SECTION_BEGIN}
## mnist-m (RGB)
`mnist-m.npz`: `images` uint8 N x 28 x 28 x **3** (RGB), `labels` int64 N, `source_index`
int64 N; {count} images, the blends of **one half** of the `{SOURCE_DOMAIN}` digits: those with
an odd index i (1, 3, ..., {source_count - 1}) in its stored order, in that order, with their
labels; `source_index` holds those indices. Built by `scripts/mnist_m.py` (also run by
`scripts/build_digits.py`), the construction of MNIST-M (Ganin & Lempitsky, ICML 2015) on this
package's digits and Debian wallpaper photographs:

1. Each photo is resized (Lanczos) so its short side is {WORK_SIDE} px (all are larger; MNIST-M
   cropped BSDS500 photos of 481x321).
2. For digit i, a numpy generator `default_rng({SEED})` draws (vectorised, in this order, for
   all digits) the photo index, a square crop side uniform in {CROP_SIDES[0]}-{CROP_SIDES[1]} px
   and the crop position (uniform); the crop is resized (Pillow bilinear) to 28x28 RGB.
3. The digit is binarised: 255 where the stored `{SOURCE_DOMAIN}` pixel is at least
   {DIGIT_THRESHOLD}, else 0, broadcast to the three channels.
4. Output `|crop - digit|` per channel: the photo inside the strokes is colour-inverted.
5. Keep the blends of the odd-index digits only (the crops are drawn for all {source_count}, so
   each kept blend is the one the full construction gives that digit).

Seed: {SEED}. Rebuild: `python -m scripts.mnist_m` (or a full `python -m scripts.build_digits`).

### {COMPLEMENT_DOMAIN} (no file)
The even-index `{SOURCE_DOMAIN}` digits (0, 2, ..., {source_count - 2}; {source_count // 2}),
read from `{SOURCE_DOMAIN}.npz` (`tpsnet_plugin.data.digits`, a view, no array of its own):
exactly the digit instances `mnist-m` does not use. Pair `mnist-m` with `{COMPLEMENT_DOMAIN}`,
not with `{SOURCE_DOMAIN}`, which shares the {count} instances `mnist-m` blends (raw pixels
then match the instance rather than the class).

### Packages
Fetched with `apt-get download` into a cache folder (`~/.cache/tpsnet_plugin/mnist-m`) and
unpacked with `dpkg-deb -x`; nothing is installed and no photo is redistributed, only the 28x28
blends.

| package | version | licence (Debian copyright) |
|---|---|---|
{package_rows}

Looked through and left out, no photographs:
{inspected}

### Photographs used
Chosen by eye from all the raster images of the packages (an explicit list, `PHOTOS` in
`scripts/mnist_m.py`): mate-backgrounds' `nature/` folder, all photographs, and the photographic
plasma wallpapers at their largest size. Left out as drawn, rendered or vector art:
mate-backgrounds `abstract/` and `desktop/`; plasma Altai, Autumn, Canopee, Cascade, Cluster,
Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak,
SafeLanding, Shell, Volna. These {len(PHOTOS)} photographs are used for the `mnist-m` crops
only: no other part of the project (no other domain, test or benchmark) uses them.

| file | package | author | licence |
|---|---|---|---|
{photo_rows}
{SECTION_END}
"""


def write_provenance_section(path: Path, section: str) -> None:
    """Put ``section`` into ``path``: replace a previous ``mnist-m`` section, else append it."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    pattern = re.compile(re.escape(SECTION_BEGIN) + r".*?" + re.escape(SECTION_END) + r"\n?",
                         re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


def write_domain(out: Path = DEFAULT_OUT, cache: Path | None = None, source: Path | None = None,
                 update: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Build ``mnist-m`` and write ``out/mnist-m.npz`` and its ``PROVENANCE.md`` section.

    ``mnist-m.npz`` holds ``images``, ``labels`` and ``source_index``: the blends of the
    odd-index source digits (:func:`source_rows`), their labels, and those indices.

    Args:
        out: Output folder.
        cache: Package cache (default :func:`default_cache_dir`).
        source: A ``handwritten-mnist`` ``.npz`` to blend; default the package's shipped domain.
        update: Let ``apt-get update`` run before fetching a missing package.

    Returns:
        ``(images, labels)`` as written (the kept half).
    """
    if source is None:
        from tpsnet_plugin.data.digits import load_domain

        digits, labels = load_domain(SOURCE_DOMAIN)
    else:
        with np.load(source) as arrays:
            digits, labels = arrays["images"], arrays["labels"].astype(np.int64)
    photos, packages = fetch_photos(cache if cache is not None else default_cache_dir(), update)
    source_index = source_rows(len(digits))
    # crops drawn for every digit (the same draws as blending them all), then the kept half
    images = build_mnist_m(digits, photos, SEED)[source_index]
    labels = labels[source_index]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_arrays(out / f"{DOMAIN}.npz", images=images, labels=labels, source_index=source_index)
    write_provenance_section(out / "PROVENANCE.md",
                             provenance_section(len(labels), packages, source_count=len(digits)))
    size = os.path.getsize(out / f"{DOMAIN}.npz")
    print(f"{DOMAIN}: {len(labels)} images (the odd-index {SOURCE_DOMAIN} digits) from "
          f"{len(photos)} photos, per class {np.bincount(labels).tolist()}, {size / 1e6:.2f} MB")
    return images, labels


def main(argv: list[str] | None = None) -> None:
    """Command line: build ``mnist-m`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"package cache (default {default_cache_dir()})")
    parser.add_argument("--source", type=Path, default=None,
                        help=f"{SOURCE_DOMAIN} .npz to blend (default: the package's)")
    args = parser.parse_args(argv)
    write_domain(args.out, args.cache_dir, args.source)


if __name__ == "__main__":
    main()
