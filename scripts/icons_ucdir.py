"""A cross-style retrieval folder dataset from the icon corpus: icon themes as domains.

Icons are grouped into coarse classes by the first word of their freedesktop name (``folder-*``,
``weather-*``, ``mail-*`` ...): within one class the drawings share an object, across themes the
drawing style changes (flat vs glossy, colour, outline). The result is a folder dataset
(``<out>/<theme>/<class>/<icon>.png``) for checking a recipe on data other than Digits. The
default pair breeze ↔ oxygen served to choose options of ``configs/folder.yaml``; the pair tango ↔
gnome is held out from every choice::

    python -m scripts.build_icons                      # the icon corpus, once
    python -m scripts.icons_ucdir --out data/icons_ucdir
    accelerate launch examples/train_ucdir.py --data-root data/icons_ucdir --domains breeze oxygen

``--classes auto`` chooses the classes itself: the first words that name at least
``--min-per-class`` (default 5) distinct drawings in EVERY theme given, e.g. the held-out pair::

    python -m scripts.icons_ucdir --out data/icons_tango_gnome --themes tango gnome --classes auto

With ``auto`` (or ``--unique-drawings``) each drawing is copied once, under one name: icon themes
draw one file under several names (aliases such as ``gtk-save`` -> ``document-save``, listed in the
manifest with the same ``source``), which would otherwise put one image in two classes or twice in
one. The name kept is the real file's own (``source``'s stem, the freedesktop name), else the
alphabetically first; so namespace prefixes of aliases (``gtk``, ``gnome``, ``stock_*``) do not
become classes.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

import tpsnet_plugin  # noqa: F401

# isort: split
from tpsnet_plugin.data.icons import load_manifest

THEMES = ("breeze", "oxygen")
CLASSES = ("folder", "weather", "audio", "media", "mail", "go", "view", "zoom", "document", "image",
           "user", "battery")


def unique_drawings(records):
    """One record per drawing (per theme and ``source``): the one named like the real file, else the
    alphabetically first name; in manifest order."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record.theme, record.source), []).append(record)
    keep = set()
    for (_, source), group in groups.items():
        own = [record for record in group if record.name == PurePosixPath(source).stem]
        keep.add(id(own[0] if own else min(group, key=lambda record: record.name)))
    return [record for record in records if id(record) in keep]


def auto_classes(records, themes, min_per_class: int = 5) -> tuple[str, ...]:
    """The first words of icon names with at least ``min_per_class`` records in every theme, sorted."""
    counts = Counter((record.theme, record.name.split("-")[0]) for record in records if record.theme in themes)
    groups = {group for _, group in counts}
    return tuple(sorted(group for group in groups if all(counts[theme, group] >= min_per_class for theme in themes)))


def build(out: Path, themes=THEMES, classes=CLASSES, cache_dir: str | None = None, min_per_class: int = 5,
          unique: bool | None = None) -> Counter:
    """Copy the icons of ``themes`` whose name starts with one of ``classes``; counts per (theme, class).

    Args:
        classes: First words of icon names, or ``"auto"``: :func:`auto_classes` with ``min_per_class``.
        unique: Copy each drawing once (:func:`unique_drawings`); default: only with ``"auto"``.
    """
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose another --out or remove it")
    auto = isinstance(classes, str) and classes == "auto"
    records = [record for record in load_manifest(cache_dir) if record.theme in themes]
    if auto if unique is None else unique:
        records = unique_drawings(records)
    if auto:
        classes = auto_classes(records, themes, min_per_class)
        if not classes:
            raise ValueError(f"no first word has {min_per_class} icons in every theme of {list(themes)}")
    counts: Counter = Counter()
    for record in records:
        group = record.name.split("-")[0]
        if group in classes:
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
    parser.add_argument("--classes", nargs="+", default=list(CLASSES),
                        help="first words of icon names (the classes), or 'auto': those with at least "
                             "--min-per-class distinct drawings in every theme")
    parser.add_argument("--min-per-class", type=int, default=5,
                        help="with --classes auto: icons a class needs in every theme (default %(default)s)")
    parser.add_argument("--unique-drawings", action="store_true",
                        help="copy each drawing once (always on with --classes auto)")
    parser.add_argument("--cache-dir", default=None, help="the icon corpus (default: scripts/build_icons.py's)")
    args = parser.parse_args(argv)
    classes = "auto" if args.classes == ["auto"] else args.classes
    counts = build(args.out, args.themes, classes, args.cache_dir, args.min_per_class,
                   unique=True if args.unique_drawings else None)
    classes = sorted({c for _, c in counts}) if classes == "auto" else classes
    print(len(classes), "classes:", " ".join(classes))
    for theme in args.themes:
        print(theme, sum(counts[theme, c] for c in classes), "images:",
              ", ".join(f"{c} {counts[theme, c]}" for c in classes))


if __name__ == "__main__":
    main()
