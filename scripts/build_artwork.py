"""Build a second offline image-caption corpus from Debian clip-art packages (for pretraining a tiny CLIP).

The corpus has exactly the on-disk format of the icon corpus (``scripts/build_icons.py``), so
``tpsnet_plugin.data.icons.load_manifest(<cache>)`` reads it::

    <cache>/images/<theme>/<name>.png   RGB, white background, size x size (64)
    <cache>/manifest.csv                columns tpsnet_plugin.data.icons.MANIFEST_COLUMNS
    <cache>/PROVENANCE.md               packages, versions, licences, counts, exclusions
    <cache>/COMPLETE                    written last: JSON with the manifest's sha256

Default cache: ``$TPSNET_CACHE/artwork`` or ``~/.cache/tpsnet_plugin/artwork``
(:func:`default_cache_dir`). Every image has split ``train``: this corpus holds no evaluation data.

Sources (``apt-get download`` + ``dpkg-deb -x``, helpers in ``scripts/debian_packages.py``):

* ``openclipart-png`` (theme ``openclipart``): PNGs under
  ``usr/share/openclipart/png/<category>/[<subcategory>/...]``. Symlinks (the same file filed under
  a second category) are skipped; the real file is used once. Caption: the title from the file
  name (:func:`openclipart_caption`). The files are named ``<title>_<author>`` cut to about 24
  characters, then a variant suffix (``_01``, ``_02``, ``_01r``, ``_r`` or a bare ``_``), e.g.
  ``medicina_dottore_archite_01.png`` (title "Medicina Dottore", author "Architetto Francesco
  Rollandin"); others carry no author (``jigsaw_red_01``, ``flat-theme/action/viewmag.png``).
  Where the title ends cannot be told from the name alone, so the author is taken from the PNG
  itself: the files keep Inkscape's ``Author`` text chunk (6,843 of the 6,900 real files). The
  rule: drop the variant suffix, then drop a trailing ``_<author>`` where ``<author>`` is a prefix
  of the slugged author name that either ends at a word boundary of that name or is cut by the
  24-character limit (the remaining name is at least :data:`TRUNCATED_LENGTH` long); the rest, split
  on ``- _ .`` and lowercased, is the caption. Without an ``Author`` chunk nothing is dropped
  (the author's name may then stay in the caption). A title cut by the 24-character limit stays cut.
* ``tuxpaint-stamps-default`` (theme ``tuxpaint``): stamps under
  ``usr/share/tuxpaint/stamps/<category>/<subcategory>/...``, each ``<stem>.png`` and/or
  ``<stem>.svg`` with ``<stem>.txt`` whose first line is the English description. The PNG wins when
  both exist; SVG-only stamps are rendered with ``rsvg-convert`` (Debian ``librsvg2-bin``, fetched and
  unpacked the same way) and skipped when it does not run. ``<stem>_mirror`` files (mirrored copies
  of a stamp, described by the stamp's ``.txt``) are skipped. Caption: :func:`tuxpaint_caption`
  (the first sentence, ASCII-folded, lowercase, punctuation dropped, a leading "a"/"an"/"the" dropped).

Every image: transparency composited on white, padded to a white square, resized once (Lanczos) to
``--size`` (build_icons' ``to_square_rgb``; sources above :data:`REDUCE_ABOVE_PIXELS` pixels are
first box-reduced with premultiplied alpha to bound memory, sources above
:data:`MAX_SOURCE_PIXELS` are skipped). ``name`` = the file's path under the package's image
folder without the extension (``animals/birds/blackbird``): unique per theme. ``source`` = the file
relative to the package root.

Left out (each image counted once, under the first rule that drops it, in this order):

1. ``link`` (openclipart symlinks: the real file is used) and ``mirror copy`` (tuxpaint
   ``*_mirror``), ``no description`` (tuxpaint stamp without ``.txt``);
2. ``holdout name``: the path or caption mentions ``tango`` or ``gnome`` (the icon themes held out
   for evaluation);
3. no digits in this corpus, as in the icon corpus: ``digit caption``, a caption with a numeral, a
   number word or any other :func:`build_icons.is_digit_icon_name` hit (clocks, calendars,
   calculators...); ``digit folder``, a folder that is one (``symbols/math``) or one of
   :data:`DIGIT_FOLDERS` (coins, bills); ``digit file (reviewed)``, the files of :data:`DIGIT_FILES`,
   seen on contact sheets of every image to draw numerals (or letters drawn like them: O, o, I, l);
   ``broken image``: :data:`BROKEN_FILES`, Inkscape's "Linked Image Not Found" placeholder seen on
   the same sheets;
4. ``empty caption``, ``unreadable``, ``under 32 px``, ``aspect > 4`` (banners and strips: at
   64 px they become a line), ``over 256 Mpx``;
5. ``duplicate image``: an image whose 64 px pixels equal an earlier one's (sorted order);
6. ``near-duplicate of a holdout icon``: the 16x16 grayscale signature (box-averaged, mean-centred,
   unit length; :func:`gray_signature`) has cosine >= :data:`NEAR_DUPLICATE_COSINE` with a
   held-out icon of the icon corpus (split ``holdout``: tango and gnome) or its mirror image
   (:func:`near_duplicate_mask`). The icon corpus must be built first (``--icons-dir``).

The build is deterministic (sorted walk, fixed PNG settings). Usage::

    python -m scripts.build_artwork [--cache-dir DIR] [--icons-dir DIR] [--size 64] [--no-svg]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import build_icons, debian_packages
from scripts.icons import candidates as icon_candidates
from scripts.icons.convert import write_png
from scripts.icons.fetch import renderer_version
from tpsnet_plugin.data.icons import (
    IMAGES_DIR,
    MANIFEST,
    MANIFEST_COLUMNS,
    MARKER,
    PROVENANCE,
    cache_dir,
    load_manifest,
)
from tpsnet_plugin.data.icons import default_cache_dir as icons_cache_dir
from tpsnet_plugin.utils.io import file_sha256

__all__ = [
    "BROKEN_FILES",
    "DIGIT_FILES",
    "DIGIT_FOLDERS",
    "HOLDOUT_WORDS",
    "NEAR_DUPLICATE_COSINE",
    "SOURCES",
    "ArtworkItem",
    "BuildResult",
    "Source",
    "build_corpus",
    "default_cache_dir",
    "find_openclipart",
    "find_tuxpaint",
    "gray_signature",
    "holdout_signatures",
    "load_square_rgb",
    "main",
    "mentions_holdout",
    "near_duplicate_mask",
    "openclipart_caption",
    "rebuild_command",
    "svg_dims",
    "tuxpaint_caption",
    "write_marker",
    "write_provenance",
]


@dataclass(frozen=True)
class Source:
    """A clip-art package.

    Args:
        theme: Theme name in the manifest.
        package: Debian package.
        folder: Image folder inside the package (relative to its root).
    """

    theme: str
    package: str
    folder: str


SOURCES = {
    "openclipart": Source("openclipart", "openclipart-png", "usr/share/openclipart/png"),
    "tuxpaint": Source("tuxpaint", "tuxpaint-stamps-default", "usr/share/tuxpaint/stamps"),
}
SVG_RENDERER_PACKAGE = build_icons.SVG_RENDERER_PACKAGE
DEFAULT_SIZE = 64
MIN_SOURCE_SIZE = build_icons.MIN_SOURCE_SIZE
MAX_ASPECT = 4.0
REDUCE_ABOVE_PIXELS = 16_000_000
MAX_SOURCE_PIXELS = 256_000_000
TRUNCATED_LENGTH = 22  # openclipart names are cut at about 24 characters (before the suffix)
NEAR_DUPLICATE_COSINE = 0.97
SIGNATURE_SIDE = 16
HOLDOUT_WORDS = ("tango", "gnome")
# Folders (relative to the package's image folder) whose images show numerals although their
# captions may not say so: coins, bank notes, currency signs with "100 cents" (tuxpaint).
DIGIT_FOLDERS = {
    "openclipart": (),
    "tuxpaint": ("symbols/money", "symbols/math"),
}
# Files seen on contact sheets of every image of the real build (5,040) to draw numerals under a
# caption without one (names as in the manifest), and letters drawn like digits ("O", "l", "I").
DIGIT_FILES: dict[str, frozenset[str]] = {
    "openclipart": frozenset({
        "computer/icons/flat-theme/action/enumList",  # "1. 2."
        "computer/icons/flat-theme/action/highscore",  # "645", "530"
        "computer/icons/flat-theme/action/make_kdevelop",  # "1100 1010"
        "computer/icons/flat-theme/action/precminus",  # "0.0"
        "computer/icons/flat-theme/action/precplus",  # "0.0"
        "computer/icons/flat-theme/applications/edu_miscellaneous",  # an abacus
        "computer/icons/flat-theme/applications/gkrellm",  # "12"
        "computer/icons/flat-theme/applications/karbon",  # "14"
        "computer/icons/flat-theme/applications/kbiff",  # "13:59"
        "computer/icons/flat-theme/applications/kbruch",  # fractions
        "computer/icons/flat-theme/applications/kconfigure",  # "101100"
        "computer/icons/flat-theme/applications/kodo",  # "2 5 7 9"
        "education/slate-apple_benji_park_01",  # "+2 3" on a slate
        "electronics/pfd_01",  # a flight display's scales
        "recreation/toys/robot_ganson",  # "RB-1"
        "signs_and_symbols/flags/america/route_jakob_chaosinfa_",  # "ROUTE 66"
        "signs_and_symbols/font_samples_revdoug_01",  # lines of type
        "signs_and_symbols/for_sale_sign_template_01",  # "$7400", a phone number
        "tools/scart_connector_pinout_s_02",  # pin numbers
        "transportation/boating/sailing_jibe",  # "1. Port Tack"...
        "transportation/lorry_length",  # "32'-6''"
        "transportation/roadsigns/interstate_highway_sign_01",  # "80"
        "transportation/roadsigns/lorry_limit",  # "7.5t"
        "unsorted/md_costea_bogdan_",  # "Ma5"
    }),
    "tuxpaint": frozenset({
        "household/tools/measuring_tape",  # "25'"
        "vehicles/locomotive/cartoon/tender",  # "Old No. 5"
    } | {f"symbols/alphabets/english/{style}/{letter}_{suffix}"  # letters drawn like "0" and "1"
         for style, suffix in (("filled", "filled"), ("outlined", "outline"))
         for letter in ("lowercase/o", "lowercase/l", "uppercase/O", "uppercase/I")}),
}
# Files seen on the contact sheets to be Inkscape's "Linked Image Not Found" placeholder (the
# drawing's bitmap was missing when the PNG was exported).
BROKEN_FILES: dict[str, frozenset[str]] = {
    "openclipart": frozenset({"animals/birds/duck_yellow_ii_kurt_cagl_",
                              "animals/birds/penguin/tux_didier_fabert_01"}
                             | {f"people/stylized_yoga_person_ger_0{i}" for i in range(1, 7)}),
    "tuxpaint": frozenset(),
}

# The variant suffix: "_01" to "_09" (optionally with a letter: "_01r"), "_r" or a bare "_". Higher
# numbers stay in the caption (so its image is left out as a digit): "_10" is also a card's rank.
_SUFFIX = re.compile(r"^(?P<body>.+?)(?:_(?:0[1-9][a-z]?|r)|_)$")
_SEPARATORS = re.compile(r"[-_.\s]+")
_NON_WORD = re.compile(r"[^a-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_NUMERAL = re.compile(r"[0-9]")
_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"',
                              "\u2014": " ", "\u2013": " ", "\u00a0": " "})


def default_cache_dir() -> Path:
    """The corpus folder used when none is given: ``$TPSNET_CACHE/artwork``, else
    ``~/.cache/tpsnet_plugin/artwork`` (``tpsnet_plugin.data.icons.cache_dir``)."""
    return cache_dir("artwork")


def rebuild_command(cache_dir: str | os.PathLike | None = None) -> str:
    """The shell command that (re)builds this corpus into ``cache_dir``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return f"python -m scripts.build_artwork --cache-dir {cache}"


# --- captions (pure) ---------------------------------------------------------------------------

def _ascii_words(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_PUNCTUATION))
    return text.encode("ascii", "ignore").decode("ascii").lower()


def _slug(text: str) -> str:
    return "_".join(token for token in _SEPARATORS.split(_NON_WORD.sub(" ", _ascii_words(text))) if token)


def openclipart_caption(stem: str, author: str | None = None) -> str:
    """The title of an openclipart PNG as lowercase words, from its file name (without ``.png``).

    Drops the variant suffix (``_01`` to ``_09``, ``_01r``, ``_r``, a bare ``_``; ``_10`` and up stay:
    playing cards are named ``white_h_10``), then, when
    ``author`` is given (the PNG's ``Author`` text chunk), a trailing ``_<prefix of the slugged
    author>`` that ends at a word boundary of the author's name or is cut by the 24-character file
    name limit; the rest is split on ``- _ .`` and blanks. If that would leave nothing, the name is
    kept whole.

    ``("medicina_dottore_archite_01", "Architetto Francesco Rollandin")`` -> ``"medicina dottore"``,
    ``("server_zazou", "zazou@shockwavedj.yahoo.es")`` -> ``"server"``,
    ``("jigsaw_red_01", "Nicu Buculei")`` -> ``"jigsaw red"``, ``("viewmag+", None)`` -> ``"viewmag+"``.
    """
    match = _SUFFIX.match(stem)
    body = match.group("body") if match else stem
    words = [token for token in _SEPARATORS.split(body.lower()) if token]
    name = "_".join(words)
    creator = _slug(author or "")
    if creator:
        for k in range(len(creator), 0, -1):
            prefix = creator[:k]
            boundary = k == len(creator) or creator[k] == "_"
            if name.endswith("_" + prefix) and (boundary or len(body) >= TRUNCATED_LENGTH):
                rest = name[: -(k + 1)].strip("_")
                if rest:
                    name = rest
                break
    return " ".join(token for token in name.split("_") if token)


def tuxpaint_caption(description: str) -> str:
    """A Tux Paint stamp description (first line of its ``.txt``) as a lowercase caption.

    Keeps the first sentence, folds to ASCII (curly quotes and dashes to plain ones, accents
    dropped), lowercases, turns every character but letters, numerals and apostrophes into blanks,
    and drops a leading "a", "an" or "the".

    ``"A knight\u2019s helmet."`` -> ``"knight's helmet"``, ``"Tux\u2014the Linux mascot!"`` ->
    ``"tux the linux mascot"``, ``"Cent sign. 100 cents make 1 dollar."`` -> ``"cent sign"``.
    """
    line = description.strip().splitlines()[0] if description.strip() else ""
    sentence = _SENTENCE_END.split(line.strip(), maxsplit=1)[0]
    words = " ".join(_NON_WORD.sub(" ", _ascii_words(sentence)).split())
    words = " ".join(word.strip("'") for word in words.split() if word.strip("'"))
    return _ARTICLE.sub("", words)


def mentions_holdout(*texts: str, words: tuple[str, ...] = HOLDOUT_WORDS) -> bool:
    """Whether any text (path, caption) contains one of ``words`` (case-insensitive substring)."""
    return any(word in text.lower() for text in texts for word in words)


def is_digit_caption(caption: str) -> bool:
    """A caption with a numeral, a number word or another digit-icon hit (``is_digit_icon_name``)."""
    # the icon patterns expect names ("keyboard-key", "zoom-original"): try the caption with dashes too
    return (bool(_NUMERAL.search(caption)) or build_icons.is_digit_icon_name(caption)
            or build_icons.is_digit_icon_name(caption.replace(" ", "-")))


# --- near duplicates (pure) --------------------------------------------------------------------

def gray_signature(image: Image.Image, side: int = SIGNATURE_SIDE) -> np.ndarray:
    """A ``side*side`` grayscale signature: box-averaged to side x side, mean-centred, unit length.

    A flat image (no variation) gives the zero vector, which matches nothing.
    """
    gray = image.convert("RGB").convert("L").resize((side, side), Image.Resampling.BOX)
    vector = np.asarray(gray, dtype=np.float64).reshape(-1)
    vector = vector - vector.mean()
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 1e-6 else np.zeros_like(vector)).astype(np.float32)


def near_duplicate_mask(signatures: np.ndarray, reference: np.ndarray,
                        threshold: float = NEAR_DUPLICATE_COSINE, chunk: int = 1024
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``signatures`` are near-duplicates of some row of ``reference``.

    Args:
        signatures: ``(n, d)`` unit (or zero) vectors, as from :func:`gray_signature`.
        reference: ``(m, d)`` unit (or zero) vectors.
        threshold: Cosine at or above which a row is a near-duplicate.

    Returns:
        ``(mask, best)``: boolean ``(n,)``; and the index of the most similar reference row
        (``-1`` when ``reference`` is empty).
    """
    signatures = np.asarray(signatures, dtype=np.float32).reshape(len(signatures), -1)
    reference = np.asarray(reference, dtype=np.float32)
    mask = np.zeros(len(signatures), dtype=bool)
    best = np.full(len(signatures), -1, dtype=np.int64)
    if len(reference) == 0 or len(signatures) == 0:
        return mask, best
    reference = reference.reshape(len(reference), -1)
    for start in range(0, len(signatures), chunk):
        cosine = signatures[start:start + chunk] @ reference.T
        best[start:start + chunk] = cosine.argmax(axis=1)
        mask[start:start + chunk] = cosine.max(axis=1) >= threshold
    return mask, best


def holdout_signatures(icons_dir: str | os.PathLike | None, side: int = SIGNATURE_SIDE
                       ) -> tuple[np.ndarray, list[str]]:
    """Signatures of the icon corpus's held-out images (split ``holdout``) and of their mirrors.

    Args:
        icons_dir: The icon corpus (default ``tpsnet_plugin.data.icons.default_cache_dir()``); it
            must be complete (``load_manifest`` checks its ``COMPLETE`` marker).

    Returns:
        ``(signatures, labels)``: ``(2 * holdout images, side * side)``; ``"<theme>/<name>"`` per
        row (``" (mirror)"`` appended for the mirrored ones).
    """
    records = [record for record in load_manifest(icons_dir) if record.split == "holdout"]
    vectors, labels = [], []
    for record in records:
        with Image.open(record.path) as image:
            rgb = image.convert("RGB")
        vectors.append(gray_signature(rgb, side))
        labels.append(f"{record.theme}/{record.name}")
        vectors.append(gray_signature(rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), side))
        labels.append(f"{record.theme}/{record.name} (mirror)")
    return (np.stack(vectors) if vectors else np.zeros((0, side * side), np.float32)), labels


# --- candidates --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtworkItem:
    """One image of a source package, before conversion.

    Args:
        theme: ``"openclipart"`` or ``"tuxpaint"``.
        name: Path under the package's image folder without extension (unique per theme).
        caption: Lowercase words.
        path: The file.
        source: The file relative to the package root.
        format: ``"png"`` or ``"svg"``.
    """

    theme: str
    name: str
    caption: str
    path: Path
    source: str
    format: str


def _walk(folder: Path):
    for current, dirs, files in os.walk(folder):
        dirs.sort()
        for file in sorted(files):
            yield Path(current) / file


def _png_author(path: Path) -> str | None:
    try:
        with _no_pixel_limit(), Image.open(path) as image:
            author = image.info.get("Author")
    except (OSError, SyntaxError, ValueError):
        return None
    return author if isinstance(author, str) and author.strip() else None


def _exclusion(theme: str, rel: str, caption: str) -> str | None:
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if mentions_holdout(rel, caption):
        return "holdout name"
    if is_digit_caption(caption):
        return "digit caption"
    if build_icons.is_digit_icon_name(folder) or any(
            folder == f or folder.startswith(f + "/") for f in DIGIT_FOLDERS.get(theme, ())):
        return "digit folder"
    if rel in DIGIT_FILES.get(theme, frozenset()):
        return "digit file (reviewed)"
    if rel in BROKEN_FILES.get(theme, frozenset()):
        return "broken image"
    if not caption:
        return "empty caption"
    return None


def find_openclipart(root: Path, theme: str = "openclipart") -> tuple[list[ArtworkItem], Counter]:
    """The usable PNGs of an unpacked ``openclipart-png`` (``root`` = package root).

    Returns:
        ``(items, skipped)``: sorted by name; files left out per reason (caption and name
        rules; image rules come at conversion).
    """
    root = Path(root)
    folder = root / SOURCES["openclipart"].folder
    items, skipped = [], Counter()
    for path in _walk(folder):
        if path.suffix.lower() != ".png":
            continue
        rel = path.relative_to(folder).with_suffix("").as_posix()
        if path.is_symlink():
            skipped["link"] += 1
            continue
        caption = openclipart_caption(path.stem, _png_author(path))
        reason = _exclusion(theme, rel, caption)
        if reason:
            skipped[reason] += 1
            continue
        items.append(ArtworkItem(theme, rel, caption, path, path.relative_to(root).as_posix(), "png"))
    items.sort(key=lambda item: item.name)  # os.walk lists a folder's files before its subfolders'
    return items, skipped


def find_tuxpaint(root: Path, svg: bool = True, theme: str = "tuxpaint") -> tuple[list[ArtworkItem], Counter]:
    """The usable stamps of an unpacked ``tuxpaint-stamps-default`` (``root`` = package root).

    Args:
        svg: Keep SVG-only stamps (they need ``rsvg-convert``); without, they count as
            ``SVG only (no renderer)``.

    Returns:
        ``(items, skipped)`` as :func:`find_openclipart`.
    """
    root = Path(root)
    folder = root / SOURCES["tuxpaint"].folder
    stems: dict[str, dict[str, Path]] = {}
    for path in _walk(folder):
        if path.suffix.lower() in (".png", ".svg") and path.is_file():
            stems.setdefault(path.relative_to(folder).with_suffix("").as_posix(), {})[path.suffix.lower()[1:]] = path
    items, skipped = [], Counter()
    for rel in sorted(stems):
        files = stems[rel]
        if rel.endswith("_mirror") and rel[: -len("_mirror")] in stems:
            skipped["mirror copy"] += 1
            continue
        text = folder / f"{rel}.txt"
        if not text.is_file():
            skipped["no description"] += 1
            continue
        caption = tuxpaint_caption(text.read_text(encoding="utf-8-sig", errors="replace"))
        reason = _exclusion(theme, rel, caption)
        if reason:
            skipped[reason] += 1
            continue
        fmt = "png" if "png" in files else "svg"
        if fmt == "svg" and not svg:
            skipped["SVG only (no renderer)"] += 1
            continue
        path = files[fmt]
        items.append(ArtworkItem(theme, rel, caption, path, path.relative_to(root).as_posix(), fmt))
    return items, skipped


# --- conversion --------------------------------------------------------------------------------

@contextlib.contextmanager
def _no_pixel_limit():
    """Lift Pillow's decompression-bomb limit (the packages are trusted; sizes are checked here)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


class SkipImage(Exception):
    """An image left out at conversion; the message is the reason."""


def load_square_rgb(path: Path, size: int) -> tuple[Image.Image, int]:
    """Open a PNG and convert it as the icon corpus does (``build_icons.to_square_rgb``).

    Sources above :data:`REDUCE_ABOVE_PIXELS` are first box-reduced (premultiplied alpha) so that
    their longer side stays at least ``8 * size``: the full-size copies of the compositing would need
    GBs.

    Returns:
        ``(image, source_size)``: the RGB ``size`` x ``size`` image; the source's longer side.

    Raises:
        SkipImage: unreadable, under :data:`MIN_SOURCE_SIZE` px, aspect above :data:`MAX_ASPECT`,
            or over :data:`MAX_SOURCE_PIXELS`.
    """
    try:
        with _no_pixel_limit(), Image.open(path) as image:
            width, height = image.size
            if min(width, height) <= 0:
                raise SkipImage("unreadable")
            if max(width, height) < MIN_SOURCE_SIZE:
                raise SkipImage(f"under {MIN_SOURCE_SIZE} px")
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise SkipImage("aspect > 4")
            if width * height > MAX_SOURCE_PIXELS:
                raise SkipImage(f"over {MAX_SOURCE_PIXELS // 1_000_000} Mpx")
            if width * height > REDUCE_ABOVE_PIXELS:
                factor = max(1, max(width, height) // (8 * size))
                premultiplied = image.convert("RGBA").convert("RGBa")
                reduced = premultiplied.reduce(factor).convert("RGBA")
                del premultiplied
                return build_icons.to_square_rgb(reduced, size), max(width, height)
            return build_icons.to_square_rgb(image, size), max(width, height)
    except (OSError, SyntaxError, ValueError) as error:
        raise SkipImage("unreadable") from error


_SVG_UNITS = {"": 1.0, "px": 1.0, "pt": 96 / 72, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}
_SVG_LENGTH = re.compile(rb"^\s*([0-9]*\.?[0-9]+)\s*(px|pt|pc|mm|cm|in)?\s*$")


def svg_dims(path: Path) -> tuple[int, int] | None:
    """Intrinsic (width, height) of an SVG in px: ``build_icons.svg_size`` (px or ``viewBox``), else
    ``width``/``height`` in pt, pc, mm, cm or in (96 px per inch); None when neither gives one."""
    dims = build_icons.svg_size(path)
    if dims is not None:
        return dims
    with open(path, "rb") as handle:
        tag = icon_candidates._SVG_TAG.search(handle.read(8192))
    if tag is None:
        return None
    attrs = dict(icon_candidates._SVG_ATTR.findall(tag.group(0)))
    lengths = [_SVG_LENGTH.match(attrs.get(key, b"")) for key in (b"width", b"height")]
    if not all(lengths):
        return None
    return tuple(round(float(m.group(1)) * _SVG_UNITS[(m.group(2) or b"").decode()]) for m in lengths)


def _render(item: ArtworkItem, size: int, renderer) -> tuple[Image.Image, int]:
    if item.format == "png":
        return load_square_rgb(item.path, size)
    dims = svg_dims(item.path)
    if dims is None or min(dims) <= 0:
        raise SkipImage("unreadable")
    if max(dims) > MAX_ASPECT * min(dims):
        raise SkipImage("aspect > 4")
    try:
        return build_icons.render_svg(item.path, size, renderer), max(dims)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SkipImage("unreadable") from error


@dataclass
class BuildResult:
    """What :func:`build_corpus` wrote.

    Args:
        rows: Manifest rows (dicts keyed by ``MANIFEST_COLUMNS``), in manifest order.
        skipped: Per theme, images left out, by reason (each image under its first reason).
        near_duplicates: ``(theme/name, matched holdout icon, cosine)`` of the near-duplicates dropped.
        holdout_images: Number of held-out icons compared against (mirrors not counted).
        closest_kept: ``(theme/name, holdout icon, cosine)`` of the kept image most similar to a
            held-out icon (None without images or holdout).
        manifest_sha256: sha256 of the manifest written.
    """

    rows: list[dict[str, str]]
    skipped: dict[str, Counter] = field(default_factory=dict)
    near_duplicates: list[tuple[str, str, float]] = field(default_factory=list)
    holdout_images: int = 0
    closest_kept: tuple[str, str, float] | None = None
    manifest_sha256: str = ""


NEAR_DUPLICATE_REASON = "near-duplicate of a holdout icon"


def build_corpus(package_roots: dict[str, Path], out: Path, holdout: tuple[np.ndarray, list[str]],
                 size: int = DEFAULT_SIZE, svg_renderer: str | os.PathLike | None = None,
                 progress: bool = False) -> BuildResult:
    """Select, convert, filter and write the corpus from unpacked packages.

    Removes ``out/COMPLETE`` and ``out/images`` first, then writes ``out/images/<theme>/<name>.png``
    and ``out/manifest.csv``; :func:`main` writes ``PROVENANCE.md`` and, last, the marker.

    Args:
        package_roots: Theme (key of :data:`SOURCES`) -> unpacked package root.
        out: Corpus folder.
        holdout: ``(signatures, labels)`` of the held-out icons, as from :func:`holdout_signatures`.
        size: Output side in pixels.
        svg_renderer: ``rsvg-convert``; without it SVG-only stamps are skipped.
        progress: Print a line per theme.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    if (out / IMAGES_DIR).exists():
        shutil.rmtree(out / IMAGES_DIR)
    finders = {"openclipart": lambda root: find_openclipart(root),
               "tuxpaint": lambda root: find_tuxpaint(root, svg=svg_renderer is not None)}
    result = BuildResult(rows=[], holdout_images=len(holdout[1]) // 2)
    kept: list[tuple[ArtworkItem, Image.Image, int]] = []
    seen: set[bytes] = set()
    for theme in sorted(package_roots):
        started = time.perf_counter()
        items, skipped = finders[theme](Path(package_roots[theme]))
        result.skipped[theme] = skipped
        for item in items:
            try:
                image, source_size = _render(item, size, svg_renderer)
            except SkipImage as reason:
                skipped[str(reason)] += 1
                continue
            digest = hashlib.sha256(image.tobytes()).digest()
            if digest in seen:
                skipped["duplicate image"] += 1
                continue
            seen.add(digest)
            kept.append((item, image, source_size))
        if progress:
            print(f"{theme}: {sum(1 for k in kept if k[0].theme == theme)} images after the name and "
                  f"image rules, {time.perf_counter() - started:.0f} s", flush=True)
    signatures = np.stack([gray_signature(image) for _, image, _ in kept]) if kept else np.zeros((0, 1))
    mask, best = near_duplicate_mask(signatures, holdout[0])
    for index, (item, image, source_size) in enumerate(kept):
        match = (f"{item.theme}/{item.name}", holdout[1][best[index]],
                 float(signatures[index] @ holdout[0][best[index]])) if best[index] >= 0 else None
        if mask[index]:
            result.skipped[item.theme][NEAR_DUPLICATE_REASON] += 1
            result.near_duplicates.append(match)
            continue
        if match is not None and (result.closest_kept is None or match[2] > result.closest_kept[2]):
            result.closest_kept = match
        rel = f"{IMAGES_DIR}/{item.theme}/{item.name}.png"
        write_png(image, out / rel)
        result.rows.append({"path": rel, "theme": item.theme, "name": item.name, "caption": item.caption,
                            "source_size": str(source_size), "split": "train", "source": item.source})
    result.rows.sort(key=lambda row: (row["theme"], row["name"]))
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.rows)
    result.manifest_sha256 = file_sha256(out / MANIFEST)
    return result


def write_marker(out: Path, result: BuildResult, size: int) -> None:
    """Write ``out/COMPLETE`` (JSON: manifest sha256, image count, size, no holdout split)."""
    marker = {"manifest_sha256": result.manifest_sha256, "images": len(result.rows), "size": size,
              "holdout": [], "near_duplicates_of_holdout_icons_dropped": len(result.near_duplicates)}
    (Path(out) / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


# --- fetching and provenance -------------------------------------------------------------------

def copyright_summary(root: Path, package: str) -> str:
    """The licence of an unpacked package from its Debian copyright file.

    The first ``License:`` value (``debian_packages.package_licence``); for a file without one
    (old free-form format), the first line after ``Copyright:``. Notes "or any later version"
    when the licence text grants it.
    """
    path = Path(root) / "usr" / "share" / "doc" / package / "copyright"
    licence = debian_packages.package_licence(root, package)
    if not path.is_file():
        return licence
    text = path.read_text(errors="replace")
    if licence.startswith("unknown"):
        lines = text.splitlines()
        for index, line in enumerate(lines):
            if line.strip().lower().startswith("copyright:"):
                rest = [entry.strip() for entry in [line.split(":", 1)[1], *lines[index + 1:]] if entry.strip()]
                if rest:
                    licence = rest[0]
                break
    if "any later version" in " ".join(text.split()):
        licence += " (the licence text adds: or any later version)"
    return licence


def fetch(cache: Path, svg: bool = True, update: bool = True
          ) -> tuple[dict[str, Path], dict[str, dict[str, str]], Path | None]:
    """Download and unpack the packages (and ``rsvg-convert``) into ``cache/debs``, ``cache/packages``.

    Returns:
        ``(roots, packages, renderer)``: theme -> package root; theme -> ``package``, ``version``,
        ``licence``, ``deb``; the ``rsvg-convert`` path or None (when ``svg`` is off or it does not run).
    """
    cache = Path(cache)
    renderer = None
    if svg:
        renderer = build_icons.fetch_svg_renderer(cache, update, left_out="SVG-only stamps")
    debs = debian_packages.download_packages(sorted(s.package for s in SOURCES.values()), cache / "debs", update)
    roots, info = {}, {}
    for theme, source in sorted(SOURCES.items()):
        deb = debs[source.package]
        root = debian_packages.extract_package(deb, cache / "packages" / source.package)
        if not (root / source.folder).is_dir():
            raise RuntimeError(f"{deb.name} has no {source.folder}")
        roots[theme] = root
        info[theme] = {"package": source.package, "version": debian_packages.deb_field(deb, "Version"),
                       "licence": copyright_summary(root, source.package), "deb": deb.name}
    return roots, info, renderer


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_provenance(path: Path, result: BuildResult, packages: dict[str, dict[str, str]], size: int,
                     renderer_version: str, icons_dir: Path, command: str) -> None:
    """Write ``PROVENANCE.md``: packages, versions, licences, counts, exclusions, rebuild command."""
    from PIL import __version__ as pillow_version

    per_theme = Counter(row["theme"] for row in result.rows)
    per_category = Counter((row["theme"], row["name"].split("/")[0]) for row in result.rows)
    package_rows = [[theme, f"`{info['package']}`", info["version"], info["licence"], per_theme.get(theme, 0)]
                    for theme, info in sorted(packages.items())]
    category_rows = [[theme, category, count] for (theme, category), count in sorted(per_category.items())]
    reasons = []
    for counts in result.skipped.values():
        for reason in counts:
            if reason not in reasons:
                reasons.append(reason)
    order = ["link", "mirror copy", "no description", "holdout name", "digit caption", "digit folder",
             "digit file (reviewed)", "broken image", "empty caption",
             "SVG only (no renderer)", "unreadable", f"under {MIN_SOURCE_SIZE} px", "aspect > 4",
             f"over {MAX_SOURCE_PIXELS // 1_000_000} Mpx", "duplicate image", NEAR_DUPLICATE_REASON]
    reasons = [r for r in order if r in reasons or r == NEAR_DUPLICATE_REASON] + sorted(
        r for r in reasons if r not in order)
    skip_rows = [[reason] + [result.skipped.get(theme, Counter()).get(reason, 0) for theme in sorted(packages)]
                 for reason in reasons]
    near = "\n".join(f"- `{name}` ~ `{icon}` (cosine {cosine:.3f})"
                     for name, icon, cosine in result.near_duplicates[:300]) or "- none"
    if len(result.near_duplicates) > 300:
        near += f"\n- ... and {len(result.near_duplicates) - 300} more"
    closest = ("`{}` ~ `{}`, cosine {:.3f}".format(*result.closest_kept) if result.closest_kept else "-")
    formats = Counter(row["source"].rsplit(".", 1)[-1] for row in result.rows if row["theme"] == "tuxpaint")
    text = f"""# Artwork corpus: provenance and licences

Image-caption pairs from Debian clip-art packages, built by `scripts/build_artwork.py` for
pretraining a tiny CLIP offline; same format as the icon corpus (`load_manifest` reads it). Every
image: composited on white, padded to a square, resized once (Lanczos) to {size}x{size}; split
`train` for all (no evaluation data here). The artwork stays under its package's licence (below);
the corpus is for local training and is not redistributed with the project.

{_table(["theme", "package", "version", "licence (Debian copyright file)", "images"], package_rows)}

Total: {len(result.rows)} images.

Licences as the copyright files state them: `openclipart-png` is a free-form file that declares the
clip art public domain ("creative commons Public Domain Dedication", Copyright-Only Dedication or
Public Domain Certification; each image's author is in its metadata). `tuxpaint-stamps-default`
declares `Files: *` and `debian/*` under `License: GPL-2`, whose text reads "either version 2 of
the License, or (at your option) any later version" (GPL-2+); no other licence is listed.

## Images per top category
{_table(["theme", "top category", "images"], category_rows)}

## Left out (images; each under the first rule, in this order)
{_table(["reason"] + sorted(packages), skip_rows)}

- `link`: openclipart symlinks (the same file filed under a second category; the real file is used).
- `holdout name`: path or caption contains `tango` or `gnome` (the held-out icon themes).
- `digit caption`: a caption with a numeral or number word or another `is_digit_icon_name` hit
  (clocks, calendars, calculators...); `digit folder`: a folder that is such a name or one of
  `DIGIT_FOLDERS` ({", ".join(f"{t}: {', '.join(f) or '-'}" for t, f in DIGIT_FOLDERS.items())});
  `digit file (reviewed)`: `DIGIT_FILES` ({sum(len(v) for v in DIGIT_FILES.values())} files found on contact
  sheets of every image of the build: numerals drawn under a caption without one, and the letters
  O, o, I, l). No caption holds a numeral.
- `broken image`: `BROKEN_FILES`, the "Linked Image Not Found" placeholder of a missing bitmap
  ({sum(len(v) for v in BROKEN_FILES.values())} files, found on the contact sheets).
- `duplicate image`: same {size} px pixels as an earlier image (sorted order).
- `{NEAR_DUPLICATE_REASON}`: 16x16 grayscale signature (mean-centred, unit length) with cosine
  >= {NEAR_DUPLICATE_COSINE} to one of the {result.holdout_images} held-out icons (split `holdout`: tango, gnome) of the
  icon corpus `{icons_dir}` or to its mirror image.

Near-duplicates dropped ({len(result.near_duplicates)}):
{near}

Closest image kept: {closest}.

tuxpaint formats: {formats.get("png", 0)} stamps from their PNG, {formats.get("svg", 0)} SVG-only stamps rendered with
rsvg-convert.

## Captions
- openclipart: the title from the file name (`openclipart_caption`): the variant suffix
  (`_01`, `_r`, `_`) dropped, then the author (from the PNG's `Author` text chunk) dropped from
  the end when the name ends with a prefix of it that stops at a word boundary or at the ~24
  character name limit; split on `- _ .`, lowercase. Titles cut by the name limit stay cut;
  without an `Author` chunk the author's name may stay in the caption.
- tuxpaint: the first sentence of the `.txt` description, ASCII-folded, lowercase, punctuation
  dropped, leading article dropped (`tuxpaint_caption`).

## Tools
Pillow {pillow_version}; SVG renderer: {renderer_version} (Debian `{SVG_RENDERER_PACKAGE}`).

## Rebuild

    {command}

Downloads with `apt-get download` (Debian/Ubuntu), unpacks with `dpkg-deb -x`; deterministic for
the same package versions and the same icon corpus.
"""
    Path(path).write_text(text)


def main(argv: list[str] | None = None) -> None:
    """Fetch the packages, build the corpus into ``--cache-dir`` and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="corpus and download folder (default $TPSNET_CACHE/artwork or "
                             "~/.cache/tpsnet_plugin/artwork; now %(default)s)")
    parser.add_argument("--icons-dir", type=Path, default=icons_cache_dir(),
                        help="the finished icon corpus whose held-out icons are kept out "
                             "(default %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side (default %(default)s)")
    parser.add_argument("--no-svg", action="store_true", help="leave out the SVG-only stamps")
    parser.add_argument("--no-apt-update", action="store_true",
                        help="do not run apt-get update before fetching missing packages")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be at least 8, got {args.size}")
    started = time.perf_counter()
    cache = args.cache_dir.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / MARKER).unlink(missing_ok=True)
    holdout = holdout_signatures(args.icons_dir.expanduser())  # fails early without the icon corpus
    if not holdout[1]:
        parser.error(f"the icon corpus {args.icons_dir} has no held-out images to protect")
    roots, packages, renderer = fetch(cache, svg=not args.no_svg, update=not args.no_apt_update)
    fetched = time.perf_counter()
    print(f"fetched {len(packages)} packages in {fetched - started:.0f} s; "
          f"{len(holdout[1]) // 2} held-out icons", flush=True)
    result = build_corpus(roots, cache, holdout, args.size, svg_renderer=renderer, progress=True)
    command = f"python -m scripts.build_artwork --cache-dir {cache} --icons-dir {args.icons_dir.expanduser()}"
    if args.size != DEFAULT_SIZE:
        command += f" --size {args.size}"
    if args.no_svg:
        command += " --no-svg"
    write_provenance(cache / PROVENANCE, result, packages, args.size, renderer_version(renderer),
                     args.icons_dir.expanduser(), command)
    write_marker(cache, result, args.size)
    print(json.dumps({"images": len(result.rows),
                      "per_theme": dict(sorted(Counter(r["theme"] for r in result.rows).items())),
                      "skipped": {theme: dict(counts) for theme, counts in result.skipped.items()},
                      "near_duplicates": len(result.near_duplicates)}, indent=1))
    print(f"built in {time.perf_counter() - started:.0f} s (fetch {fetched - started:.0f} s): {cache}")


if __name__ == "__main__":
    main()
