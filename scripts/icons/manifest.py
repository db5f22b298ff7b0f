"""Step 4 of the icon corpus: the manifest, ``PROVENANCE.md`` and, last, the ``COMPLETE`` marker."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from scripts.icons.candidates import MIN_SOURCE_SIZE
from scripts.icons.fetch import SVG_RENDERER_PACKAGE
from scripts.icons.themes import THEMES
from tpsnet_plugin.data.icons import MANIFEST, MANIFEST_COLUMNS, MARKER, rebuild_command
from tpsnet_plugin.utils.io import file_sha256

__all__ = ["BuildResult", "corpus_stats", "write_manifest", "write_marker", "write_provenance"]


@dataclass
class BuildResult:
    """What :func:`~scripts.icons.corpus.build_corpus` wrote.

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


def write_manifest(out: Path, rows: list[dict[str, str]]) -> str:
    """Write ``out/manifest.csv`` (columns ``MANIFEST_COLUMNS``, rows in the order given).

    Returns:
        The sha256 of the file written, for the ``COMPLETE`` marker.
    """
    with open(Path(out) / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return file_sha256(Path(out) / MANIFEST)


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


def write_provenance(path: Path, result: BuildResult, packages: dict[str, dict[str, str]], size: int,
                     holdout: list[str], renderer_version: str) -> None:
    """Write ``PROVENANCE.md``: packages, versions, licences, counts, filters, holdout, rebuild.

    Args:
        path: Output file.
        result: The build's result.
        packages: Theme -> ``package``, ``version``, ``licence`` (as from :func:`~scripts.icons.fetch.fetch_themes`).
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
