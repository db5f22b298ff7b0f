"""Step 2 of the icon corpus: a theme's usable files per icon name, and the one file chosen per name.

Digit icons are left out here, by name (:func:`is_digit_icon_name`) and by reviewed file
(:data:`DIGIT_SOURCE_FILES`); why each filter exists: ``scripts/ICONS_PROVENANCE.md``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = [
    "DIGIT_NAME_PATTERNS",
    "DIGIT_NAME_TOKENS",
    "DIGIT_SOURCE_FILES",
    "MAX_ASPECT",
    "MIN_SOURCE_SIZE",
    "SKIPPED_CONTEXTS",
    "Candidate",
    "choose",
    "find_candidates",
    "is_digit_icon_name",
    "svg_size",
]

MIN_SOURCE_SIZE = 32  # 16-24 px designs are simplified pixel-grid drawings, blurry when upscaled
MAX_ASPECT = 2.0  # longer side / shorter side; above it the file is a strip, not an icon
SKIPPED_CONTEXTS = frozenset({"animations"})  # sprite strips of spinner frames

# A name is excluded when one of its tokens (split on - _ . and blanks, lowercase) is in
# DIGIT_NAME_TOKENS or when one of DIGIT_NAME_PATTERNS occurs anywhere in it (case-insensitive);
# the lists come from looking at contact sheets of the candidates. Names with numerals go
# entirely: their icons often draw them (battery and signal percentages, "3G", "MP3", calendar
# days, the game "2048", version numbers in logos), and with them out no caption holds a numeral,
# so no image is ever paired with a number in text.
DIGIT_NAME_TOKENS = frozenset({
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "num", "date", "time", "alarm", "appointment", "appointments", "events", "ordered", "counter",
    "bits", "mines", "kmines",
})
DIGIT_NAME_PATTERNS = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    r"[0-9]",  # any numeral: "0", "42", "keyboard-key-5", "battery-040", "gsm-3g", "audio-x-mp3"
    r"digit|numb|numer|numpad|numlock|keypad|dialpad|dialer",  # numbers, key pads, dial pads
    r"calc|math|formula|sudoku|abacus|fifteen",  # calculators, formulas, number puzzles
    r"[ck]alendar|agenda|clock(?!wise)|chrono|kronometer|timer|stopwatch",  # day numbers, hours
    r"keyboard[-_.]?key",  # key caps
    r"zoom[-_.]?(original|actual)",  # drawn as "1:1"
    r"repeat[-_.]?(song|single|one|track)",  # a "1" on the repeat arrows
    r"system[-_.]?monitor",  # load figures
    r"binary|octet|x[-_.]object|hex|firmware|msdownload",  # "0101", hex dumps
    r"financ|javafx",  # calculators on ledgers, numbered film slates
    r"percent|superscript|subscript",  # "100%", x²
    r"simpleweather|temperature",  # "39°"
))
# Files found on the contact sheets to draw a numeral although no name says so, per theme, by the
# real file's name (every size of it, and every alias pointing to it, is left out).
DIGIT_SOURCE_FILES = {
    "adwaita": frozenset({"mail-send.png"}),  # a postage stamp "50"
    "gnome": frozenset({"mail-send.png"}),  # a postage stamp "50"
    "moka": frozenset({"input-keyboard.png"}),  # a key cap "@ 2"
    "oxygen": frozenset({"mail-send.png"}),  # a postage stamp "32"
}
_TOKENS = re.compile(r"[-_.\s]+")


def is_digit_icon_name(name: str) -> bool:
    """Whether an icon name is a number or an icon that shows numerals (excluded from the corpus).

    Excluded: every name with a numeral (``"0"``, ``"keyboard-key-5"``, ``"battery-040"``,
    ``"audio-x-mp3"``, ``"python3"``), number words as tokens (``"one"``, ``"audio-volume-zero"``)
    and names with a token of :data:`DIGIT_NAME_TOKENS` or a pattern of
    :data:`DIGIT_NAME_PATTERNS` (``"number-one"``, ``"input-dialpad"``, ``"x-office-calendar"``,
    ``"accessories-calculator"``, ``"format-list-numbered"``, ``"zoom-original"``,
    ``"media-playlist-repeat-one"``, ``"application-octet-stream"``).
    """
    tokens = {token for token in _TOKENS.split(name.lower()) if token}
    if tokens & DIGIT_NAME_TOKENS:
        return True
    return any(pattern.search(name) for pattern in DIGIT_NAME_PATTERNS)


@dataclass(frozen=True)
class Candidate:
    """One file that draws an icon name in a theme.

    Args:
        rel: Path relative to the theme folder (the link's path for an alias).
        real: The real file (symlinks resolved).
        size: Source size in pixels: the longer side (PNG) or intrinsic size (SVG).
    """

    rel: str
    real: Path
    size: int


def _png_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


_SVG_TAG = re.compile(rb"<svg\b[^>]*>", re.DOTALL)
_SVG_ATTR = re.compile(rb"""\s(width|height|viewBox)\s*=\s*["']([^"']*)["']""")
_LENGTH = re.compile(rb"^\s*([0-9]*\.?[0-9]+)\s*(px)?\s*$")


def svg_size(path: Path) -> tuple[int, int] | None:
    """Intrinsic (width, height) of an SVG from its root tag (``width``/``height`` in px, else
    ``viewBox``), rounded; None when neither gives a size."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
    tag = _SVG_TAG.search(head)
    if tag is None:
        return None
    attrs = dict(_SVG_ATTR.findall(tag.group(0)))
    width, height = (_LENGTH.match(attrs.get(key, b"")) for key in (b"width", b"height"))
    if width and height:
        return round(float(width.group(1))), round(float(height.group(1)))
    box = attrs.get(b"viewBox", b"").replace(b",", b" ").split()
    if len(box) == 4:
        try:
            return round(float(box[2])), round(float(box[3]))
        except ValueError:
            return None
    return None


def find_candidates(theme_dir: Path, fmt: str = "png", exclude_files: frozenset[str] = frozenset()
                    ) -> tuple[dict[str, list[Candidate]], Counter]:
    """All usable files of a theme, grouped by icon name.

    Args:
        theme_dir: Theme folder (``.../usr/share/icons/<Theme>``); symlinked folders are not
            followed (they repeat files already walked).
        fmt: ``"png"`` or ``"svg"``: the file type used.
        exclude_files: Real file names (symlinks resolved) to leave out, at every size.

    Returns:
        ``(candidates, skipped)``: icon name -> candidate files (walk order); and the number of
        files (or, for ``digit name``, names) left out per reason.
    """
    theme_dir = Path(theme_dir).resolve()
    suffix = "." + fmt
    candidates: dict[str, list[Candidate]] = {}
    skipped: Counter = Counter()
    digit_names = set()
    for folder, dirs, files in os.walk(theme_dir):
        dirs.sort()
        for file in sorted(files):
            if not file.endswith(suffix):
                continue
            path = Path(folder) / file
            rel = path.relative_to(theme_dir).as_posix()
            name = file[: -len(suffix)]
            if "symbolic" in rel.lower():
                skipped["symbolic"] += 1
                continue
            if SKIPPED_CONTEXTS & set(rel.lower().split("/")[:-1]):
                skipped["animation"] += 1
                continue
            if is_digit_icon_name(name):
                digit_names.add(name)
                continue
            real = Path(os.path.realpath(path))
            if not real.is_file() or theme_dir not in real.parents:
                skipped["broken or outside link"] += 1
                continue
            if real.name in exclude_files:
                skipped["digit image (reviewed)"] += 1
                continue
            dims = _png_size(real) if fmt == "png" else svg_size(real)
            if dims is None or min(dims) <= 0:
                skipped["unreadable"] += 1
                continue
            if max(dims) > MAX_ASPECT * min(dims):
                skipped["strip (aspect > 2)"] += 1
                continue
            if max(dims) < MIN_SOURCE_SIZE:
                skipped[f"under {MIN_SOURCE_SIZE} px"] += 1
                continue
            candidates.setdefault(name, []).append(Candidate(rel, real, max(dims)))
    if digit_names:
        skipped["digit name"] = len(digit_names)
    return candidates, skipped


def choose(candidates: list[Candidate]) -> Candidate:
    """The candidate with the largest source size; ties go to the first relative path."""
    return min(candidates, key=lambda candidate: (-candidate.size, candidate.rel))
