"""Icons: an offline image-caption corpus of freedesktop icon themes, for pretraining a tiny CLIP.

The corpus is built by ``scripts/build_icons.py`` from Debian icon-theme packages into a cache
folder (default ``~/.cache/tpsnet_plugin/icons``, or ``$TPSNET_CACHE/icons``)::

    <cache>/images/<theme>/<icon name>.png   RGB, white background, size x size
    <cache>/manifest.csv                     one row per image (see MANIFEST_COLUMNS)
    <cache>/PROVENANCE.md                    packages, versions, licences, counts
    <cache>/COMPLETE                         written last: JSON with the manifest's sha256

:func:`load_manifest` reads the manifest and refuses a corpus whose ``COMPLETE`` marker is
missing or does not match the manifest (an interrupted or altered build), naming the command
that rebuilds it. Captions are the icon names as words (:func:`caption_from_name`); the
pretraining turns them into sentences with :data:`TEMPLATES`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TPSNetError
from ..utils.io import file_sha256

MANIFEST = "manifest.csv"
MARKER = "COMPLETE"
PROVENANCE = "PROVENANCE.md"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = ("path", "theme", "name", "caption", "source_size", "split", "source")
SPLITS = ("train", "holdout")

# Prompt templates for the captions; "{}" is replaced by the caption ("audio volume high").
TEMPLATES = (
    "{}",
    "an icon of {}",
    "a {} icon",
    "a {} symbol",
    "an image of {}",
    "a picture of {}",
    "a drawing of {}",
    "a small picture of {}",
)

_SEPARATORS = re.compile(r"[-_.\s]+")


def cache_dir(name: str) -> Path:
    """The folder of a built corpus, fetched data or a cache: ``$TPSNET_CACHE/<name>`` when the
    environment variable ``TPSNET_CACHE`` is set, else ``$XDG_CACHE_HOME/tpsnet_plugin/<name>``
    (``~/.cache/tpsnet_plugin/<name>`` without ``XDG_CACHE_HOME``)."""
    root = os.environ.get("TPSNET_CACHE")
    if root:
        return Path(root).expanduser() / name
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tpsnet_plugin" / name


def default_cache_dir() -> Path:
    """The icon corpus folder used when none is given: :func:`cache_dir` ``("icons")``."""
    return cache_dir("icons")


def rebuild_command(cache_dir: str | os.PathLike | None = None) -> str:
    """The shell command that (re)builds the corpus into ``cache_dir``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return f"python -m scripts.build_icons --cache-dir {cache}"


def caption_from_name(name: str) -> str:
    """An icon name as lowercase words: split on ``-``, ``_``, ``.`` and blanks, numbers kept.

    ``audio-volume-high`` -> ``"audio volume high"``, ``org.gnome.Maps`` -> ``"org gnome maps"``,
    ``battery_level_40`` -> ``"battery level 40"``.
    """
    return " ".join(token for token in _SEPARATORS.split(name.lower()) if token)


class IncompleteCorpusError(TPSNetError, RuntimeError):
    """The corpus folder holds no finished build (missing or mismatched ``COMPLETE`` marker)."""


@dataclass(frozen=True)
class IconRecord:
    """One manifest row.

    Args:
        path: Absolute path of the image (RGB PNG, ``size`` x ``size``, white background).
        theme: Icon theme (the image's domain/style), e.g. ``"tango"``.
        name: Freedesktop icon name, e.g. ``"audio-volume-high"``.
        caption: The name as words, e.g. ``"audio volume high"``.
        source_size: Pixel size (longer side) of the source image before the resize.
        split: ``"train"`` or ``"holdout"`` (whole themes are held out).
        source: The source file, relative to the theme's folder in its package.
    """

    path: Path
    theme: str
    name: str
    caption: str
    source_size: int
    split: str
    source: str


def load_manifest(cache_dir: str | os.PathLike | None = None, check_files: bool = True) -> list[IconRecord]:
    """Read a finished corpus's manifest.

    Args:
        cache_dir: Corpus folder (default :func:`default_cache_dir`).
        check_files: Also check that every image file exists.

    Returns:
        The rows, in manifest order (sorted by theme, then name).

    Raises:
        IncompleteCorpusError: No manifest, no ``COMPLETE`` marker, a marker whose sha256 differs
            from the manifest's, or (with ``check_files``) a missing image; the message names the
            rebuild command.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fix = f"run `{rebuild_command(cache)}`"
    manifest, marker = cache / MANIFEST, cache / MARKER
    if not manifest.is_file():
        raise IncompleteCorpusError(f"no icon corpus in {cache} ({MANIFEST} missing): {fix}")
    if not marker.is_file():
        raise IncompleteCorpusError(
            f"interrupted build: {cache} has no {MARKER} marker (the build did not finish): {fix}")
    try:
        expected = json.loads(marker.read_text())["manifest_sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise IncompleteCorpusError(f"unreadable {MARKER} marker in {cache} ({error}): {fix}") from None
    actual = file_sha256(manifest)
    if actual != expected:
        raise IncompleteCorpusError(
            f"interrupted or altered build: {manifest} has sha256 {actual[:12]}..., the {MARKER} "
            f"marker expects {expected[:12]}...: {fix}")
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise IncompleteCorpusError(
                f"{manifest} has columns {reader.fieldnames}, expected {list(MANIFEST_COLUMNS)}: {fix}")
        records = [IconRecord(path=cache / row["path"], theme=row["theme"], name=row["name"],
                              caption=row["caption"], source_size=int(row["source_size"]),
                              split=row["split"], source=row["source"]) for row in reader]
    if check_files:
        missing = [record.path for record in records if not record.path.is_file()]
        if missing:
            raise IncompleteCorpusError(
                f"{len(missing)} image(s) of {manifest} missing, e.g. {missing[0]}: {fix}")
    return records
