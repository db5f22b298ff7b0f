"""One visual domain of a folder-organised benchmark (Office-Home, DomainNet, Office-31)."""

from __future__ import annotations

import difflib
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from .image_io import load_rgb
from .transforms import default_transform
from .walk import Walk, find_images, is_readable, looks_like_office31, preview, visible_entries

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUTS = ("auto", "folder", "office31", "list")
ON_ERROR = ("raise", "skip")


class DomainImageFolder(Dataset):
    """The images of one domain, labelled by class, for cross-domain retrieval.

    Supported layouts:

    - ``"folder"``: ``<root>/<domain>/<class>/<image>`` (Office-Home, DomainNet folders);
    - ``"office31"``: ``<root>/<domain>/images/<class>/<image>``;
    - ``"auto"``: ``"office31"`` if ``<root>/<domain>/images`` is a folder holding folders and no
      image files, else ``"folder"``; ``"list"`` when ``list_file`` is given;
    - ``"list"``: ``list_file`` holds ``relative/path label`` lines (DomainNet's split files, e.g.
      ``clipart/aircraft_carrier/clipart_001_000018.jpg 0``), paths relative to ``root``. When the
      file's labels map one-to-one to the paths' parent folders, those folders are the class names
      (so ``classes`` can select and reorder a subset, e.g. DomainNet-7); otherwise the labels
      index ``classes`` directly (default names ``"0"``, ``"1"``, ...).

    Folder layouts look for images recursively inside each class folder and skip hidden files
    and folders. Symlinks are followed, but each real folder is entered once (a symlink loop
    ends; a link to a sibling class folder is not walked) and each real file is counted once;
    images whose real path lies outside the domain folder are kept with a warning naming them.
    ``"auto"`` ignores stray files (``readme.txt``) next to the class folders of
    ``<domain>/images``. Samples are ordered by class folder, then path (folders), or as in the
    list file (lists). List files are UTF-8 (a byte-order mark is ignored).

    Images are decoded by :func:`~tpsnet_plugin.data.image_io.load_rgb`: any mode becomes 8-bit
    RGB, transparency is composited on white, 16-bit images are scaled by their full range and
    float images by theirs ([0, 1] or [0, 255]); float images with NaN/inf or another range are
    unreadable (convert them to 8-bit PNG or JPEG).

    Unreadable images: with ``on_error="raise"`` the error surfaces, naming the file, when the
    image is loaded (list entries pointing to missing files fail at construction). With
    ``on_error="skip"`` every file is decoded once at construction by :meth:`check_images`
    (JPEGs at 1/8 scale, several threads) and unreadable ones are dropped, listed in
    ``skipped`` and counted in a warning. A file that breaks after that scan still raises.

    Attributes:
        root: The dataset root.
        domain: The domain name.
        layout: The resolved layout.
        classes: Class names; ``classes[label]`` is the class of a sample.
        samples: ``(path, label)`` per sample.
        labels: int64 array of labels, one per sample.
        missing_classes: Entries of ``classes`` without images in this domain.
        ignored_classes: Classes found in this domain but absent from ``classes`` (not loaded).
        skipped: Paths dropped as missing or unreadable (``on_error="skip"`` only).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        domain: str,
        classes: Sequence[str] | None = None,
        layout: str = "auto",
        list_file: str | os.PathLike | None = None,
        transform: Callable | None = None,
        image_size: int | tuple[int, int] = 224,
        on_error: str = "raise",
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ):
        """Scan one domain.

        Args:
            root: Dataset root: the folder holding the domain folders (or the base of the
                list file's relative paths).
            domain: Domain folder name (for lists: the name to report).
            classes: Shared class order; None uses this domain's sorted class folders (lists:
                the names in label order). Classes without images here are allowed and listed
                in ``missing_classes``; images of classes not listed are left out.
            layout: ``"auto"``, ``"folder"``, ``"office31"`` or ``"list"``.
            list_file: The list file for ``layout="list"``; a relative path is tried against
                the working directory, then against ``root``.
            transform: Callable applied to the RGB PIL image; default
                :func:`default_transform` of ``image_size``.
            image_size: Output size of the default transform; ignored when ``transform`` is given.
            on_error: ``"raise"`` or ``"skip"`` for unreadable or missing images (see above).
            extensions: File extensions treated as images, compared case-insensitively.
        """
        if layout not in LAYOUTS:
            raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if list_file is not None and layout == "auto":
            layout = "list"
        if (layout == "list") != (list_file is not None):
            raise DataError("the list layout and list files go together: pass both layout='list' and "
                            "list_file= (config: data.layout, data.list_files), or neither")
        self.root = Path(root)
        self.domain = str(domain)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset root {str(self.root)!r} does not exist or is not a folder; pass the "
                "folder that contains the domain folders (e.g. .../OfficeHomeDataset_10072016)"
            )
        self.on_error = on_error
        self.skipped: list[str] = []
        self.transform = transform if transform is not None else default_transform(image_size)
        if layout == "list":
            self.layout = "list"
            found_classes = self._read_list(list_file, classes)
        else:
            extensions = tuple(f".{e.lower().lstrip('.')}" for e in extensions)
            found_classes = self._scan_folders(layout, extensions)
        self.set_classes(found_classes if classes is None else classes)
        if on_error == "skip":
            self.check_images()

    def _domain_dir(self) -> Path:
        domain_dir = self.root / self.domain
        if domain_dir.is_dir():
            return domain_dir
        found = [e.name for e in visible_entries(self.root) if e.is_dir()]
        close = difflib.get_close_matches(self.domain, found, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(
            f"domain {self.domain!r} not found under {str(self.root)!r}: domains found there: "
            f"{preview(found)}{hint}"
        )

    def _scan_folders(self, layout: str, extensions: tuple[str, ...]) -> list[str]:
        """Collect ``(path, class name)`` pairs; return the sorted class folder names."""
        domain_dir = self._domain_dir()
        images_dir = domain_dir / "images"
        if layout == "auto":
            layout = "office31" if looks_like_office31(images_dir, extensions) else "folder"
        self.layout = layout
        class_root = images_dir if layout == "office31" else domain_dir
        images_part = "images/" if layout == "office31" else ""
        expected = f"<root>/{self.domain}/{images_part}<class>/<image>"
        if not class_root.is_dir():
            raise FileNotFoundError(f"{str(class_root)!r} does not exist: layout {layout!r} "
                                    f"expects {expected}; try layout='auto' (config: data.layout)")
        class_names = [e.name for e in visible_entries(class_root) if e.is_dir()]
        self._items = self._walk_classes(domain_dir, class_root, class_names, extensions)
        if not self._items:
            loose = find_images(class_root, extensions) if not class_names else []
            detail = (
                f"{len(loose)} images lie directly in it without class folders" if loose else
                f"found {len(class_names)} class folders and no files ending in "
                f"{preview(extensions)}"
            )
            raise DataError(
                f"domain {self.domain!r} ({str(class_root)!r}) holds no images: {detail}. "
                f"Expected {expected}; check root, domain and layout (config: data.root, data.domains, "
                "data.layout), or pass extensions=..."
            )
        return class_names

    def _walk_classes(self, domain_dir: Path, class_root: Path, class_names: Sequence[str],
                      extensions: tuple[str, ...]) -> list[tuple[str, str]]:
        """``(path, class name)`` of every image of every class folder; warns about symlinks."""
        walk = Walk(domain_dir, extensions, [class_root / name for name in class_names])
        found = [(path, real, linked, name)
                 for name in class_names for path, real, linked in walk.find(class_root / name)]
        direct = {real for _, real, linked, _ in found if not linked}
        items, kept = [], set()
        for path, real, linked, name in found:
            if real in kept or (linked and real in direct):
                walk.duplicates.append(path)
                continue
            kept.add(real)
            items.append((path, name))
            if walk.is_outside(real):
                walk.outside.append((path, real))
        where = f"domain {self.domain!r} ({str(domain_dir)!r})"
        if walk.outside:
            shown = preview([f"{path} -> {real}" for path, real in walk.outside], 5)
            warnings.warn(
                f"{where}: {len(walk.outside)} image(s) reached through symlinks lie outside the "
                f"domain folder: {shown}. They are used, labelled by the class folder that links "
                "to them; remove the links if they belong to another domain or class",
                stacklevel=4,
            )
        if walk.repeated_dirs or walk.duplicates:
            warnings.warn(
                f"{where}: symlinks lead to folders or files already listed (a symlink loop, or "
                f"several links to one place); each was used once: {len(walk.repeated_dirs)} "
                f"folder(s) not entered again {preview(walk.repeated_dirs, 5)}, "
                f"{len(walk.duplicates)} file(s) not counted again {preview(walk.duplicates, 5)}",
                stacklevel=4,
            )
        return items

    def _read_list(self, list_file: str | os.PathLike, classes: Sequence[str] | None) -> list[str]:
        """Parse the list file into ``(path, class name)`` pairs; return the class order."""
        list_path = Path(list_file)
        if not list_path.is_file() and not list_path.is_absolute():
            list_path = self.root / list_path
        if not list_path.is_file():
            raise FileNotFoundError(f"list file {str(list_file)!r} does not exist (a relative "
                                    "path is tried against the working directory, then root "
                                    f"{str(self.root)!r})")
        entries = []  # (relative path, label, line number)
        raw = list_path.read_bytes()
        try:
            content = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of a path
        except UnicodeDecodeError as err:
            lineno = raw.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"list file {str(list_path)!r} is not UTF-8 text (line {lineno}: {err.reason}, "
                f"byte 0x{raw[err.start]:02x}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
            ) from None
        lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            where = f"{list_path}:{lineno}"
            # Split at the last whitespace: paths may contain spaces ("Real World/...").
            parts = text.rsplit(None, 1)
            try:
                label = int(parts[1]) if len(parts) == 2 else -1
            except ValueError:
                label = -1
            if label < 0:
                raise DataError(f"{where}: malformed line {text!r}; expected "
                                 "'<relative/path/to/image> <non-negative integer label>'")
            relative = parts[0].replace("\\", "/")
            pure = PurePosixPath(relative)
            if pure.is_absolute() or PureWindowsPath(parts[0]).drive or ".." in pure.parts:
                raise DataError(f"{where}: path {parts[0]!r} escapes the dataset root "
                                 f"{str(self.root)!r}; list paths must be relative to root, "
                                 "without '..' or a leading '/'")
            entries.append((relative, label, lineno))
        if not entries:
            raise DataError(f"list file {str(list_path)!r} for domain {self.domain!r} "
                             "has no entries")

        folders_of_label, labels_of_folder = defaultdict(set), defaultdict(set)
        for relative, label, _ in entries:
            folder = PurePosixPath(relative).parent.name
            folders_of_label[label].add(folder)
            labels_of_folder[folder].add(label)
        named = "" not in labels_of_folder and all(
            len(s) == 1 for s in (*folders_of_label.values(), *labels_of_folder.values())
        )
        if named:
            names = {label: folders.pop() for label, folders in folders_of_label.items()}
            found_classes = [names[label] for label in sorted(names)]
        elif classes is not None:
            for _, label, lineno in entries:
                if label >= len(classes):
                    raise DataError(f"{list_path}:{lineno}: label {label} out of range for the "
                                     f"{len(classes)} given classes; labels must lie in "
                                     f"[0, {len(classes) - 1}]")
            names = dict(enumerate(classes))
            found_classes = list(classes)
        else:
            names = {label: str(label) for label in folders_of_label}
            found_classes = [names[label] for label in sorted(names)]

        self._items, missing = [], []
        for relative, label, lineno in entries:
            path = os.path.join(self.root, relative)
            if os.path.isfile(path):
                self._items.append((path, names[label]))
            else:
                missing.append((path, lineno))
        if missing and self.on_error == "raise":
            shown = preview([f"{path} (line {lineno})" for path, lineno in missing], 5)
            raise FileNotFoundError(
                f"{len(missing)} of {len(entries)} files listed in {str(list_path)!r} do not "
                f"exist: {shown}; fix root or the list, or pass on_error='skip' (config: data.on_error) to drop "
                "them"
            )
        if missing:
            self.skipped.extend(path for path, _ in missing)
            warnings.warn(f"domain {self.domain!r}: skipped {len(missing)} missing files listed "
                          f"in {str(list_path)!r}; see `.skipped`", stacklevel=3)
        if not self._items:
            raise DataError(f"none of the files listed in {str(list_path)!r} exists under "
                             f"{str(self.root)!r}; is root the folder the paths are relative to?")
        return found_classes

    def set_classes(self, classes: Sequence[str]) -> None:
        """Relabel the samples to a new class order.

        Images of classes not in ``classes`` are left out (``ignored_classes``); classes without
        images here are allowed (``missing_classes``). Used by the multi-domain builder to give
        every domain the same class order.

        Args:
            classes: The class names, in label order.
        """
        classes = [str(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise DataError("classes must be a non-empty list of distinct names, got "
                             f"{preview(classes)}")
        index = {name: i for i, name in enumerate(classes)}
        samples = [(path, index[name]) for path, name in self._items if name in index]
        found = list(dict.fromkeys(name for _, name in self._items))
        if not samples:
            raise DataError(f"domain {self.domain!r} has no images of the requested classes "
                             f"{preview(classes)}; its classes are {preview(found)}")
        present = {name for _, name in self._items}
        self.classes = classes
        self.samples = samples
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.missing_classes = [c for c in classes if c not in present]
        self.ignored_classes = [c for c in found if c not in index]

    def check_images(self, num_workers: int | None = None) -> list[str]:
        """Decode every image once and drop the unreadable ones.

        Args:
            num_workers: Decoding threads; default ``min(8, cpu count)``.

        Returns:
            The paths dropped by this call (also appended to ``skipped``).
        """
        paths = [path for path, _ in self._items]
        workers = num_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            readable = list(pool.map(is_readable, paths))
        bad = [path for path, ok in zip(paths, readable) if not ok]
        if not bad:
            return bad
        self._items = [item for item, ok in zip(self._items, readable) if ok]
        self.skipped.extend(bad)
        warnings.warn(f"domain {self.domain!r}: skipped {len(bad)} unreadable image(s) of "
                      f"{len(paths)} (first: {bad[0]}); see `.skipped`", stacklevel=2)
        if not self._items:
            raise DataError(f"domain {self.domain!r}: none of its {len(paths)} images can be read")
        self.set_classes(self.classes)
        return bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """Return ``(image, label, index)``: the transformed image, its class label, ``index``."""
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except Exception as err:  # ImageReadError names the file and the reason
            raise OSError(
                f"{err} (domain {self.domain!r}). Replace or delete the file, or pass on_error='skip' "
                "(config: data.on_error) to drop unreadable images"
            ) from err
        return self.transform(image), label, index

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, domain={self.domain!r}, "
                f"layout={self.layout!r}, samples={len(self)}, classes={len(self.classes)})")
