"""Build an offline image-caption corpus from Debian icon themes (for pretraining a tiny CLIP).

Icon themes draw the same freedesktop icon names (``document-save``, ``audio-volume-high``...) in
very different styles, so they give image-caption pairs with real style variety from packages
alone. Per theme and icon name the corpus holds ONE image, captioned by the name as words
(``tpsnet_plugin.data.icons.caption_from_name``); the pretraining wraps captions in
:data:`TEMPLATES`.

Steps:

1. Fetch: ``apt-get download`` each theme's package into ``<cache>/debs`` (``apt-get update``
   runs once, only when a package is missing) and ``dpkg-deb -x`` it into
   ``<cache>/packages/<package>`` (helpers in ``scripts/debian_packages.py``). The SVG-only
   themes (papirus, breeze) are rendered with ``rsvg-convert`` from ``librsvg2-bin``, fetched and
   unpacked the same way; it links against ``librsvg2-2``, which Debian systems with GTK already
   have. When it does not run, the SVG themes are left out (``--no-svg`` leaves them out too).
2. Select (:func:`find_candidates`, :func:`choose`): walk the theme folder; symlinks (theme
   aliases) are resolved to the real file, which must lie inside the theme folder (broken links
   are skipped). Skipped: names or folders containing ``symbolic`` (one-colour silhouettes, a
   different kind of image), the ``animations`` context (sprite strips of spinner frames), images
   whose longer side is more than twice the shorter (other strips), sources under
   :data:`MIN_SOURCE_SIZE` px (16-24 px designs are simplified pixel-grid drawings; upscaled they
   would be blurry), and digit icon names (:func:`is_digit_icon_name`). Per (theme, name) the
   image with the largest source size wins (the most detailed drawing); ties go to the
   alphabetically first path relative to the theme folder. PNG themes use their PNGs only, SVG
   themes their SVGs only (a theme's format never depends on the machine); an SVG's source size
   is its intrinsic ``width``/``height`` (else ``viewBox``).
3. Convert (:func:`to_square_rgb`): transparency composited on white, padded on white to a square
   (aspect kept, centred), resized once to ``--size`` x ``--size`` with Lanczos (SVGs are rendered
   straight at that size instead); written as 8-bit RGB PNG with fixed settings to
   ``<cache>/images/<theme>/<name>.png``.
4. Write ``<cache>/manifest.csv`` (columns ``tpsnet_plugin.data.icons.MANIFEST_COLUMNS``, sorted
   by theme then name, split ``holdout`` for the held-out themes), ``<cache>/PROVENANCE.md`` and
   last the ``<cache>/COMPLETE`` marker with the manifest's sha256, which
   ``tpsnet_plugin.data.icons.load_manifest`` checks. The build is deterministic: the same
   packages give byte-identical images, manifest and provenance.

No digits: the corpus must hold no image of a Digits domain and no digit glyph, so icon names that
are numbers or whose icons show numerals are excluded (:func:`is_digit_icon_name`): every name
containing a numeral (levels, versions, "3G", "MP3": such icons often draw the number, and without
them no caption holds a numeral), number words, ``digit``/``number``/``numeric``..., key pads and
dial pads, calculators and mathematics, number puzzles (sudoku, fifteen, mines), calendars, agendas
and dates (day numbers), clocks and timers, numbered lists, "repeat one" ("1"), system monitors
(load figures), binary/hex data and firmware ("0101"), finance (calculators), percentages,
super/subscripts, temperatures and zoom levels ("1:1"). The lists come from contact sheets of the
candidate names in the real build; files that draw a numeral under an innocent name are listed in
:data:`DIGIT_SOURCE_FILES`. A name filter cannot see every image, so a small numeral inside an
otherwise unrelated icon may remain.

Holdout: :data:`DEFAULT_HOLDOUT` = ``tango gnome``. Whole themes are held out so the pretraining can
check that the image encoder generalises to an unseen drawing style. The two are one style family
(gnome-icon-theme 3.12 is drawn in the Tango style), so holding out both keeps that style entirely
out of training; with one of them in training the other would not be unseen. Both are mid-sized
(0.8-1.0k names after the filters, 7 % of the images together, so training keeps almost all the
data), and their names are nearly all freedesktop standard names: 95 % of each theme's names are
also drawn by at least two other themes, and over 80 % of the holdout images have a name drawn by at
least two training themes, so the holdout tests styles, not new vocabulary. The large themes
(faenza, moka, paper, papirus) carry many application names that no other theme draws, breeze and
oxygen share few names, and adwaita (0.35k names) is too small to be a useful test.

Usage::

    python -m scripts.build_icons [--cache-dir DIR] [--size 64] [--themes tango moka ...]
                                  [--holdout tango gnome] [--no-svg]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from scripts import debian_packages
from tpsnet_plugin.data.icons import (
    IMAGES_DIR,
    MANIFEST,
    MANIFEST_COLUMNS,
    MARKER,
    PROVENANCE,
    TEMPLATES,
    caption_from_name,
    default_cache_dir,
    rebuild_command,
)
from tpsnet_plugin.utils.io import file_sha256

__all__ = [
    "DEFAULT_HOLDOUT",
    "DIGIT_NAME_PATTERNS",
    "DIGIT_NAME_TOKENS",
    "DIGIT_SOURCE_FILES",
    "MIN_SOURCE_SIZE",
    "TEMPLATES",
    "THEMES",
    "BuildResult",
    "Candidate",
    "ThemeSource",
    "build_corpus",
    "choose",
    "corpus_stats",
    "fetch_themes",
    "find_candidates",
    "is_digit_icon_name",
    "main",
    "render_svg",
    "svg_size",
    "to_square_rgb",
    "write_marker",
    "write_provenance",
]


@dataclass(frozen=True)
class ThemeSource:
    """Where a theme comes from.

    Args:
        package: Debian package.
        folder: Theme folder under ``usr/share/icons`` in the package.
        format: ``"png"`` or ``"svg"``: the files used from it.
    """

    package: str
    folder: str
    format: str


THEMES = {
    "adwaita": ThemeSource("adwaita-icon-theme", "Adwaita", "png"),
    "breeze": ThemeSource("breeze-icon-theme", "breeze", "svg"),
    "elementary-xfce": ThemeSource("elementary-xfce-icon-theme", "elementary-xfce", "png"),
    "faenza": ThemeSource("faenza-icon-theme", "Faenza", "png"),
    "gnome": ThemeSource("gnome-icon-theme", "gnome", "png"),
    "moka": ThemeSource("moka-icon-theme", "Moka", "png"),
    "oxygen": ThemeSource("oxygen-icon-theme", "oxygen", "png"),
    "paper": ThemeSource("paper-icon-theme", "Paper", "png"),
    "papirus": ThemeSource("papirus-icon-theme", "Papirus", "svg"),
    "tango": ThemeSource("tango-icon-theme", "Tango", "png"),
    "yaru": ThemeSource("yaru-theme-icon", "Yaru", "png"),
}
SVG_RENDERER_PACKAGE = "librsvg2-bin"
DEFAULT_HOLDOUT = ("tango", "gnome")
DEFAULT_SIZE = 64
MIN_SOURCE_SIZE = 32
MAX_ASPECT = 2.0  # longer side / shorter side; above it the file is a strip, not an icon
SKIPPED_CONTEXTS = frozenset({"animations"})
PNG_COMPRESS_LEVEL = 9

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


@dataclass
class BuildResult:
    """What :func:`build_corpus` wrote.

    Args:
        rows: Manifest rows (dicts keyed by ``MANIFEST_COLUMNS``), in manifest order.
        skipped: Per theme, files or names left out, by reason.
        source_files: Per theme, distinct real files behind its images (aliases share one).
        manifest_sha256: sha256 of the manifest written.
    """

    rows: list[dict[str, str]]
    skipped: dict[str, Counter] = field(default_factory=dict)
    source_files: dict[str, int] = field(default_factory=dict)
    manifest_sha256: str = ""


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


def _write_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)


def build_corpus(theme_dirs: dict[str, Path], out: Path, size: int = DEFAULT_SIZE,
                 holdout: tuple[str, ...] | list[str] = DEFAULT_HOLDOUT,
                 formats: dict[str, str] | None = None,
                 svg_renderer: str | os.PathLike | None = None,
                 progress: bool = False) -> BuildResult:
    """Select, convert and write the corpus from already unpacked theme folders.

    Removes ``out/COMPLETE`` first and ``out/images`` (a previous build), then writes
    ``out/images/<theme>/<name>.png``, ``out/manifest.csv`` and, last, ``out/COMPLETE``.
    ``PROVENANCE.md`` is written by :func:`main`, before the marker.

    Args:
        theme_dirs: Theme name (used in paths and the manifest) -> theme folder.
        out: Corpus folder.
        size: Output side in pixels.
        holdout: Themes whose images get split ``holdout`` (each must be in ``theme_dirs``).
        formats: Theme -> ``"png"`` or ``"svg"``; default :data:`THEMES`' format for known
            themes, ``"png"`` for others.
        svg_renderer: ``rsvg-convert`` executable; needed when a theme's format is ``"svg"``.
        progress: Print one line per theme.

    Returns:
        The manifest rows, skip counts and manifest sha256.
    """
    unknown = sorted(set(holdout) - set(theme_dirs))
    if unknown:
        raise ValueError(f"holdout themes {unknown} are not among the themes built {sorted(theme_dirs)}")
    formats = {theme: (formats or {}).get(theme, THEMES[theme].format if theme in THEMES else "png")
               for theme in theme_dirs}
    if "svg" in formats.values() and svg_renderer is None:
        raise ValueError(f"SVG themes {[t for t, f in formats.items() if f == 'svg']} need svg_renderer")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    if (out / IMAGES_DIR).exists():
        shutil.rmtree(out / IMAGES_DIR)
    result = BuildResult(rows=[])
    for theme in sorted(theme_dirs):
        started = time.perf_counter()
        candidates, skipped = find_candidates(theme_dirs[theme], formats[theme],
                                              DIGIT_SOURCE_FILES.get(theme, frozenset()))
        result.skipped[theme] = skipped
        done: dict[Path, Image.Image] = {}  # aliases of one real file are converted once
        for name in sorted(candidates):
            pick = choose(candidates[name])
            if pick.real not in done:
                if formats[theme] == "svg":
                    done[pick.real] = render_svg(pick.real, size, svg_renderer)
                else:
                    with Image.open(pick.real) as image:
                        done[pick.real] = to_square_rgb(image, size)
            rel = f"{IMAGES_DIR}/{theme}/{name}.png"
            _write_png(done[pick.real], out / rel)
            result.rows.append({
                "path": rel, "theme": theme, "name": name, "caption": caption_from_name(name),
                "source_size": str(pick.size), "split": "holdout" if theme in holdout else "train",
                "source": pick.real.relative_to(Path(theme_dirs[theme]).resolve()).as_posix(),
            })
        result.source_files[theme] = len(done)
        if progress:
            print(f"{theme}: {len(candidates)} names, {len(done)} distinct source files, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.rows)
    result.manifest_sha256 = file_sha256(out / MANIFEST)
    return result


def write_marker(out: Path, result: BuildResult, size: int, holdout: tuple[str, ...] | list[str]) -> None:
    """Write ``out/COMPLETE`` (JSON: manifest sha256, image count, size, holdout themes)."""
    marker = {"manifest_sha256": result.manifest_sha256, "images": len(result.rows), "size": size,
              "holdout": sorted(holdout)}
    (Path(out) / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


def corpus_stats(rows: list[dict[str, str]]) -> dict:
    """Counts for the provenance note and the summary.

    Returns:
        Dict with ``images``, ``names``, ``per_theme`` (theme -> images), ``per_split``,
        ``shared_2`` / ``shared_3`` (names drawn by at least 2 / 3 themes) and
        ``holdout_coverage`` (holdout theme -> its names also drawn by at least 2 training themes).
    """
    themes_of: dict[str, set[str]] = {}
    for row in rows:
        themes_of.setdefault(row["name"], set()).add(row["theme"])
    holdout = {row["theme"] for row in rows if row["split"] == "holdout"}
    return {
        "images": len(rows),
        "names": len(themes_of),
        "per_theme": dict(sorted(Counter(row["theme"] for row in rows).items())),
        "per_split": dict(sorted(Counter(row["split"] for row in rows).items())),
        "shared_2": sum(len(themes) >= 2 for themes in themes_of.values()),
        "shared_3": sum(len(themes) >= 3 for themes in themes_of.values()),
        "holdout_coverage": {theme: sum(1 for row in rows if row["theme"] == theme
                                        and len(themes_of[row["name"]] - holdout) >= 2)
                             for theme in sorted(holdout)},
    }


def fetch_svg_renderer(cache: Path, update: bool, left_out: str) -> Path | None:
    """``rsvg-convert`` from :data:`SVG_RENDERER_PACKAGE`, fetched and unpacked into ``cache``; None
    (with a message naming what is ``left_out``) when it does not run on this machine."""
    debs = debian_packages.download_packages([SVG_RENDERER_PACKAGE], Path(cache) / "debs", update)
    root = debian_packages.extract_package(debs[SVG_RENDERER_PACKAGE],
                                           Path(cache) / "packages" / SVG_RENDERER_PACKAGE)
    candidate = root / "usr" / "bin" / "rsvg-convert"
    try:
        subprocess.run([str(candidate), "--version"], check=True, capture_output=True)
        return candidate
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"rsvg-convert from {SVG_RENDERER_PACKAGE} does not run here ({error}); {left_out} are left out",
              file=sys.stderr)
        return None


def fetch_themes(cache: Path, themes: list[str], svg: bool = True, update: bool = True
                 ) -> tuple[dict[str, Path], dict[str, dict[str, str]], Path | None]:
    """Download and unpack the themes' packages (and the SVG renderer) into the cache.

    Args:
        cache: Cache folder: ``.deb`` files go to ``cache/debs``, unpacked trees to
            ``cache/packages/<package>``.
        themes: Keys of :data:`THEMES`.
        svg: Fetch ``rsvg-convert`` for the SVG themes; without it, or when it does not run, the
            SVG themes are dropped (with a message).
        update: Allow ``apt-get update`` (once) before fetching a missing package.

    Returns:
        ``(theme_dirs, packages, renderer)``: theme -> theme folder; theme -> ``package``,
        ``version``, ``licence``, ``deb``; the ``rsvg-convert`` path or None.
    """
    cache = Path(cache)
    renderer = None
    if svg and any(THEMES[theme].format == "svg" for theme in themes):
        renderer = fetch_svg_renderer(cache, update, left_out="the SVG themes")
    if renderer is None:
        dropped = [theme for theme in themes if THEMES[theme].format == "svg"]
        if dropped:
            print(f"leaving out the SVG themes {dropped} (no renderer)", file=sys.stderr)
        themes = [theme for theme in themes if theme not in dropped]
    packages = sorted({THEMES[theme].package for theme in themes})
    debs = debian_packages.download_packages(packages, cache / "debs", update)
    theme_dirs, info = {}, {}
    for theme in themes:
        source = THEMES[theme]
        deb = debs[source.package]
        root = debian_packages.extract_package(deb, cache / "packages" / source.package)
        theme_dirs[theme] = root / "usr" / "share" / "icons" / source.folder
        if not theme_dirs[theme].is_dir():
            raise RuntimeError(f"{deb.name} has no usr/share/icons/{source.folder}")
        info[theme] = {"package": source.package, "version": debian_packages.deb_field(deb, "Version"),
                       "licence": debian_packages.package_licence(root, source.package),
                       "deb": deb.name}
    return theme_dirs, info, renderer


def _renderer_version(renderer: Path | None) -> str:
    if renderer is None:
        return "none"
    result = subprocess.run([str(renderer), "--version"], check=True, capture_output=True, text=True)
    return result.stdout.strip()


def write_provenance(path: Path, result: BuildResult, packages: dict[str, dict[str, str]], size: int,
                     holdout: list[str], renderer_version: str) -> None:
    """Write ``PROVENANCE.md``: packages, versions, licences, counts, filters, holdout, rebuild.

    Args:
        path: Output file.
        result: The build's result.
        packages: Theme -> ``package``, ``version``, ``licence`` (as from :func:`fetch_themes`).
        size: Image side.
        holdout: Held-out themes.
        renderer_version: ``rsvg-convert --version`` output, or ``"none"``.
    """
    from PIL import __version__ as pillow_version

    stats = corpus_stats(result.rows)
    per_theme = stats["per_theme"]
    lines = ["| theme | package | version | licence (first `License:` of the copyright file) | format "
             "| images = names | distinct source files | split |", "|---|---|---|---|---|---|---|---|"]
    for theme in sorted(packages):
        info = packages[theme]
        lines.append(f"| {theme} | `{info['package']}` | {info['version']} | {info['licence']} | "
                     f"{THEMES[theme].format if theme in THEMES else 'png'} | {per_theme.get(theme, 0)} | "
                     f"{result.source_files.get(theme, 0)} | "
                     f"{'holdout' if theme in holdout else 'train'} |")
    reasons = sorted({reason for skipped in result.skipped.values() for reason in skipped})
    skip_lines = ["| theme | " + " | ".join(reasons) + " |", "|---" * (len(reasons) + 1) + "|"]
    for theme in sorted(result.skipped):
        skip_lines.append(f"| {theme} | " + " | ".join(str(result.skipped[theme].get(reason, 0))
                                                      for reason in reasons) + " |")
    coverage = ", ".join(f"{theme} {count} of {per_theme.get(theme, 0)}"
                         for theme, count in stats["holdout_coverage"].items())
    text = f"""# Icons corpus: provenance and licences

Image-caption pairs from Debian icon-theme packages, built by `scripts/build_icons.py` for
pretraining a tiny CLIP offline. One image per (theme, icon name): the largest source of at least
{MIN_SOURCE_SIZE} px, composited on white, padded to a square, resized once (Lanczos) to
{size}x{size} (SVG themes rendered at that size by rsvg-convert); caption = the icon name as
lowercase words. The icon artwork stays under its theme's licence (below); the corpus is for local
training and is not redistributed with the project.

{chr(10).join(lines)}

Total: {stats['images']} images, {stats['names']} distinct names; names drawn by at least 2 themes:
{stats['shared_2']}, by at least 3 themes: {stats['shared_3']}.

Holdout (whole themes, split `holdout` in the manifest): {", ".join(holdout) or "none"};
{stats['per_split'].get('holdout', 0)} holdout and {stats['per_split'].get('train', 0)} train images.
Holdout names also drawn by at least 2 training themes: {coverage or "-"}.

## Left out (files, except `digit name`: distinct names)
{chr(10).join(skip_lines)}

Digit names: numbers, number words, digit/number/numeric, key pads, dial pads, calculators,
mathematics, number puzzles, calendars, agendas, dates, clocks, timers, numbered lists,
"repeat one", system monitors, binary/hex data, firmware, finance, percentages, super/subscripts,
temperatures, zoom levels, and every name containing a numeral (`is_digit_icon_name`, `DIGIT_NAME_TOKENS`,
`DIGIT_NAME_PATTERNS` in the script); plus the files in `DIGIT_SOURCE_FILES`, found on contact
sheets to draw a numeral ("digit image (reviewed)", files). No caption holds a numeral.

## Tools
Pillow {pillow_version}; SVG renderer: {renderer_version} (Debian `{SVG_RENDERER_PACKAGE}`).

## Rebuild

    {rebuild_command(path.parent)}

Downloads with `apt-get download` (Debian/Ubuntu), unpacks with `dpkg-deb -x`; deterministic for
the same package versions.
"""
    Path(path).write_text(text)


def _du(path: Path) -> int:
    return sum(entry.stat(follow_symlinks=False).st_blocks * 512 for entry in Path(path).rglob("*"))


def main(argv: list[str] | None = None) -> None:
    """Fetch the packages, build the corpus into ``--cache-dir`` and print a summary.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="corpus and download folder (default $TPSNET_CACHE/icons or "
                             "~/.cache/tpsnet_plugin/icons; now %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side (default %(default)s)")
    parser.add_argument("--themes", nargs="+", choices=sorted(THEMES), default=sorted(THEMES),
                        metavar="THEME", help=f"themes to build (default all: {' '.join(sorted(THEMES))})")
    parser.add_argument("--holdout", nargs="*", choices=sorted(THEMES), default=None, metavar="THEME",
                        help=f"whole themes held out (default {' '.join(DEFAULT_HOLDOUT)}, those of "
                             "them that are built; give none for no holdout)")
    parser.add_argument("--no-svg", action="store_true", help="leave out the SVG-only themes")
    parser.add_argument("--no-apt-update", action="store_true",
                        help="do not run apt-get update before fetching missing packages")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be at least 8, got {args.size}")
    started = time.perf_counter()
    cache = args.cache_dir.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / MARKER).unlink(missing_ok=True)  # an interrupted fetch must not leave an old marker
    theme_dirs, packages, renderer = fetch_themes(cache, sorted(set(args.themes)), svg=not args.no_svg,
                                                  update=not args.no_apt_update)
    holdout = ([theme for theme in DEFAULT_HOLDOUT if theme in theme_dirs] if args.holdout is None
               else sorted(set(args.holdout)))
    missing = sorted(set(holdout) - set(theme_dirs))
    if missing:
        parser.error(f"--holdout {' '.join(missing)}: not among the themes built ({' '.join(theme_dirs)})")
    fetched = time.perf_counter()
    print(f"fetched {len(packages)} themes in {fetched - started:.0f} s", flush=True)
    result = build_corpus(theme_dirs, cache, args.size, holdout, svg_renderer=renderer, progress=True)
    write_provenance(cache / PROVENANCE, result, packages, args.size, holdout, _renderer_version(renderer))
    write_marker(cache, result, args.size, holdout)
    stats = corpus_stats(result.rows)
    print(json.dumps({**stats, "skipped": {theme: dict(sorted(counts.items()))
                                           for theme, counts in result.skipped.items()},
                      "source_files": result.source_files}, indent=1))
    print(f"built in {time.perf_counter() - started:.0f} s (fetch {fetched - started:.0f} s); "
          f"images {_du(cache / IMAGES_DIR) / 1e6:.1f} MB, cache {_du(cache) / 1e6:.0f} MB: {cache}")


if __name__ == "__main__":
    main()
