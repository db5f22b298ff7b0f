"""Walking image folders: visible entries only, each real folder once, symlink loops broken.

Hidden files and folders (``.DS_Store``, macOS ``._x.jpg`` resource forks) are skipped; the
folder datasets and ``retrieve`` share this walk, so they see the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .image_io import check_image


def preview(names: Sequence[str], limit: int = 20) -> str:
    """Render a list of names for an error message, truncated after ``limit`` entries."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"


def visible_entries(path: Path) -> list[os.DirEntry]:
    # Hidden entries (".DS_Store", macOS "._x.jpg" resource forks) are never data.
    with os.scandir(path) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


class Walk:
    """Image files under class folders, each real folder entered once, each real file kept once.

    Symlinks are followed (datasets are often assembled from links), but a folder already
    entered (by its ``(st_dev, st_ino)``) is not entered again, so a symlink loop ends and a
    link to a sibling class folder does not relabel that class's images. The class folders
    themselves count as entered before the walk starts. Files whose real path lies outside the
    domain folder are kept and listed in ``outside``; a real file reached twice is kept once,
    preferring a path that does not go through a symlink.
    """

    def __init__(self, domain_dir: Path, extensions: tuple[str, ...], class_roots: Sequence[Path]):
        self.domain_real = os.path.realpath(domain_dir)
        self.extensions = extensions
        self.entered = {key for key in map(_dir_key, class_roots) if key is not None}
        self.repeated_dirs: list[str] = []  # folders not entered again
        self.duplicates: list[str] = []  # paths of real files already listed
        self.outside: list[tuple[str, str]] = []  # (path, real path) outside the domain folder

    def find(self, class_root: Path) -> list[tuple[str, str, bool]]:
        """``(path, real path, through a symlink)`` of every image under ``class_root``, sorted."""
        found = []
        # Depth first, files of a folder before its subfolders, names sorted (like os.walk).
        stack = [(str(class_root), os.path.realpath(class_root), os.path.islink(class_root))]
        while stack:
            path, real, linked = stack.pop()
            try:
                entries = visible_entries(Path(path))
            except OSError:  # unreadable or vanished folder: nothing to list
                continue
            subdirs = []
            for entry in entries:
                is_link = entry.is_symlink()
                try:
                    is_dir = entry.is_dir()  # follows links; a dangling link is neither
                except OSError:
                    continue
                if is_dir:
                    key = _dir_key(entry.path)
                    if key is None:
                        continue
                    if key in self.entered:
                        self.repeated_dirs.append(entry.path)
                        continue
                    self.entered.add(key)
                    child_real = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
                    subdirs.append((entry.path, child_real, linked or is_link))
                elif entry.name.lower().endswith(self.extensions):  # dangling links fail later
                    file_real = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
                    found.append((entry.path, file_real, linked or is_link))
            stack.extend(reversed(subdirs))
        return found

    def is_outside(self, real: str) -> bool:
        return real != self.domain_real and not real.startswith(self.domain_real.rstrip(os.sep) + os.sep)


def _dir_key(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def find_images(directory: Path, extensions: tuple[str, ...]) -> list[str]:
    """All image files under ``directory`` (recursively, each real folder once), sorted."""
    return [path for path, _, _ in Walk(directory, extensions, [directory]).find(directory)]


def looks_like_office31(images_dir: Path, extensions: tuple[str, ...]) -> bool:
    """``<domain>/images`` holds class folders (stray files such as ``readme.txt`` allowed).

    A folder ``images`` with image files directly inside is a class of the folder layout.
    """
    if not images_dir.is_dir():
        return False
    entries = visible_entries(images_dir)
    has_folders = any(_is_dir(e) for e in entries)
    has_images = any(e.name.lower().endswith(extensions) and _is_file(e) for e in entries)
    return has_folders and not has_images


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def is_readable(path: str) -> bool:
    try:
        check_image(path)
        return True
    except Exception:  # any decoder failure, or values that cannot be mapped to 8 bit
        return False
