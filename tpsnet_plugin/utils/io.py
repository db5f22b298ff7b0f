"""Atomic file writes: a reader sees the old file or the new one, never a partial write.

Each write goes to a hidden temporary file in the target's folder (so ``os.replace`` stays on one
file system and is atomic), is flushed and fsynced, then renamed over the target. On any error
the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "atomic_open", "atomic_save_numpy", "atomic_write_bytes", "atomic_write_text", "file_ends_digest", "file_sha256",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file whose content replaces ``path`` only when the ``with`` block succeeds.

    Args:
        path: The file to write; its folder must exist.

    Yields:
        A binary file object for writing.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask apply, as for a plain open(); mkstemp would force 0o600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    Args:
        path: The file to write; its folder must exist.
        data: The new content.
    """
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`).

    Args:
        path: The file to write; its folder must exist.
        text: The new content.
        encoding: Text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_numpy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (see :func:`atomic_open`); no ``.npy`` is appended.

    Args:
        path: The file to write; its folder must exist.
        array: The array to save (pickled object arrays are refused).
    """
    with atomic_open(path) as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; skipped where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


ENDS_BYTES = 8192  # bytes read from each end of a file by file_ends_digest


def file_ends_digest(path: str | os.PathLike) -> bytes | None:
    """A cheap content digest: the file's size and a hash of its first and last ``ENDS_BYTES``
    (the whole file when it is small); None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(ENDS_BYTES)
            f.seek(max(size - ENDS_BYTES, len(head)))
            tail = f.read(ENDS_BYTES)
    except OSError:
        return None
    return size.to_bytes(8, "little") + hashlib.blake2b(head + b"|" + tail, digest_size=16).digest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
