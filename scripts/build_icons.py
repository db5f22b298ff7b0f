"""Build an offline image-caption corpus from Debian icon themes (for pretraining a tiny CLIP).

Per theme and icon name the corpus holds one image, captioned by the name as words, in a cache
folder: ``images/``, ``manifest.csv``, ``PROVENANCE.md`` and, last, the ``COMPLETE`` marker. This
module is the command; the steps (fetch, select, convert, write) live in :mod:`scripts.icons`, and
their public names are importable from here too. What each step does and why (the filters, no
digits, the holdout): ``scripts/ICONS_PROVENANCE.md``.

Usage::

    python -m scripts.build_icons [--cache-dir DIR] [--size 64] [--themes tango moka ...]
                                  [--holdout tango gnome] [--no-svg]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scripts.icons.candidates import (
    DIGIT_NAME_PATTERNS,
    DIGIT_NAME_TOKENS,
    DIGIT_SOURCE_FILES,
    MIN_SOURCE_SIZE,
    Candidate,
    choose,
    find_candidates,
    is_digit_icon_name,
    svg_size,
)
from scripts.icons.convert import PNG_COMPRESS_LEVEL, render_svg, to_square_rgb
from scripts.icons.corpus import DEFAULT_SIZE, build_corpus
from scripts.icons.fetch import SVG_RENDERER_PACKAGE, fetch_svg_renderer, fetch_themes, renderer_version
from scripts.icons.manifest import BuildResult, corpus_stats, write_marker, write_provenance
from scripts.icons.themes import DEFAULT_HOLDOUT, THEMES, ThemeSource
from tpsnet_plugin.data.icons import IMAGES_DIR, MARKER, PROVENANCE, TEMPLATES, default_cache_dir

__all__ = [
    "DEFAULT_HOLDOUT",
    "DIGIT_NAME_PATTERNS",
    "DIGIT_NAME_TOKENS",
    "DIGIT_SOURCE_FILES",
    "MIN_SOURCE_SIZE",
    "PNG_COMPRESS_LEVEL",
    "SVG_RENDERER_PACKAGE",
    "TEMPLATES",
    "THEMES",
    "BuildResult",
    "Candidate",
    "ThemeSource",
    "build_corpus",
    "choose",
    "corpus_stats",
    "fetch_svg_renderer",
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
    write_provenance(cache / PROVENANCE, result, packages, args.size, holdout, renderer_version(renderer))
    write_marker(cache, result, args.size, holdout)
    stats = corpus_stats(result.rows)
    print(json.dumps({**stats, "skipped": {theme: dict(sorted(counts.items()))
                                           for theme, counts in result.skipped.items()},
                      "source_files": result.source_files}, indent=1))
    print(f"built in {time.perf_counter() - started:.0f} s (fetch {fetched - started:.0f} s); "
          f"images {_du(cache / IMAGES_DIR) / 1e6:.1f} MB, cache {_du(cache) / 1e6:.0f} MB: {cache}")


if __name__ == "__main__":
    main()
