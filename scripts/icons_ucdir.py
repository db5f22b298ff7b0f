"""A cross-style retrieval folder dataset from the icon corpus: icon themes as domains.

Icons are grouped into coarse classes by the first word of their freedesktop name (``folder-*``,
``weather-*``, ``mail-*`` ...): within one class the drawings share an object, across themes the
drawing style changes (flat vs glossy, colour, outline). The result is a folder dataset
(``<out>/<theme>/<class>/<icon>.png``) that nothing in this project was tuned on, for checking how
a recipe does on data it has not seen::

    python scripts/build_icons.py                      # the icon corpus, once
    python scripts/icons_ucdir.py --out data/icons_ucdir
    accelerate launch examples/train_ucdir.py --data-root data/icons_ucdir --domains breeze oxygen
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

import tpsnet_plugin  # noqa: F401

# isort: split
from tpsnet_plugin.data.icons import load_manifest

THEMES = ("breeze", "oxygen")
CLASSES = ("folder", "weather", "audio", "media", "mail", "go", "view", "zoom", "document", "image",
           "user", "battery")


def build(out: Path, themes=THEMES, classes=CLASSES, cache_dir: str | None = None) -> Counter:
    """Copy the icons of ``themes`` whose name starts with one of ``classes``; counts per (theme, class)."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose another --out or remove it")
    counts: Counter = Counter()
    for record in load_manifest(cache_dir):
        group = record.name.split("-")[0]
        if record.theme in themes and group in classes:
            target = out / record.theme / group / Path(record.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.path, target)
            counts[record.theme, group] += 1
    missing = [(t, c) for t in themes for c in classes if counts[t, c] == 0]
    if missing:
        raise ValueError(f"no icons for {missing}: every class must exist in every theme")
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="empty or new folder for the dataset")
    parser.add_argument("--themes", nargs="+", default=list(THEMES), help="icon themes (the domains)")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), help="first words of icon names (the classes)")
    parser.add_argument("--cache-dir", default=None, help="the icon corpus (default: scripts/build_icons.py's)")
    args = parser.parse_args(argv)
    counts = build(args.out, args.themes, args.classes, args.cache_dir)
    for theme in args.themes:
        print(theme, sum(counts[theme, c] for c in args.classes), "images:",
              ", ".join(f"{c} {counts[theme, c]}" for c in args.classes))


if __name__ == "__main__":
    main()
