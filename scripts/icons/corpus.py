"""Steps 2 to 4 of the icon corpus over unpacked theme folders: select, convert, write the manifest."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from PIL import Image

from scripts.icons.candidates import DIGIT_SOURCE_FILES, choose, find_candidates
from scripts.icons.convert import render_svg, to_square_rgb, write_png
from scripts.icons.manifest import BuildResult, write_manifest
from scripts.icons.themes import DEFAULT_HOLDOUT, THEMES
from tpsnet_plugin.data.icons import IMAGES_DIR, MARKER, caption_from_name

__all__ = ["DEFAULT_SIZE", "build_corpus"]

DEFAULT_SIZE = 64


def build_corpus(theme_dirs: dict[str, Path], out: Path, size: int = DEFAULT_SIZE,
                 holdout: tuple[str, ...] | list[str] = DEFAULT_HOLDOUT,
                 formats: dict[str, str] | None = None,
                 svg_renderer: str | os.PathLike | None = None,
                 progress: bool = False) -> BuildResult:
    """Select, convert and write the corpus from already unpacked theme folders.

    Removes ``out/COMPLETE`` first and ``out/images`` (a previous build), then writes
    ``out/images/<theme>/<name>.png`` and ``out/manifest.csv``. The caller then writes
    ``PROVENANCE.md`` (:func:`~scripts.icons.manifest.write_provenance`) and, last, the marker
    (:func:`~scripts.icons.manifest.write_marker`), as ``scripts.build_icons.main`` does.

    Args:
        theme_dirs: Theme name (used in paths and the manifest) -> theme folder.
        out: Corpus folder.
        size: Output side in pixels.
        holdout: Themes whose images get split ``holdout`` (each must be in ``theme_dirs``).
        formats: Theme -> ``"png"`` or ``"svg"``; default :data:`~scripts.icons.themes.THEMES`' format for known
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
            write_png(done[pick.real], out / rel)
            result.rows.append({
                "path": rel, "theme": theme, "name": name, "caption": caption_from_name(name),
                "source_size": str(pick.size), "split": "holdout" if theme in holdout else "train",
                "source": pick.real.relative_to(Path(theme_dirs[theme]).resolve()).as_posix(),
            })
        result.source_files[theme] = len(done)
        if progress:
            print(f"{theme}: {len(candidates)} names, {len(done)} distinct source files, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    result.manifest_sha256 = write_manifest(out, result.rows)
    return result
