"""Fetch Debian packages into a cache folder without installing them (no root needed to unpack).

Shared by the data build scripts: ``apt-get download`` fetches a package's ``.deb`` into a folder,
``dpkg-deb -x`` unpacks it into its own folder, and the helpers below read its version and
licence for the provenance notes. ``apt-get update`` runs at most once per process, and only when
a package is missing from the local folder.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

EXTRACTED_MARKER = ".extracted"  # written in an unpacked folder once dpkg-deb -x finished

_updated = False


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} not found: these helpers need Debian's apt and dpkg") from None
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or error.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {error.returncode}): "
                           + " | ".join(detail)) from None
    return result.stdout


def apt_update() -> None:
    """Run ``apt-get update`` once per process (later calls do nothing)."""
    global _updated
    if not _updated:
        _run(["apt-get", "update"])
        _updated = True


def find_deb(package: str, folder: Path) -> Path | None:
    """The ``.deb`` of ``package`` already in ``folder`` (newest name if several), or None."""
    debs = sorted(Path(folder).glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def download_packages(packages: list[str], folder: Path, update: bool = True) -> dict[str, Path]:
    """Make sure each package's ``.deb`` is in ``folder``; fetch the missing ones.

    Args:
        packages: Debian binary package names.
        folder: Download folder (created).
        update: Run ``apt-get update`` (once per process) before fetching a missing package.

    Returns:
        Package name -> ``.deb`` path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [package for package in packages if find_deb(package, folder) is None]
    if missing:
        if update:
            apt_update()
        _run(["apt-get", "download", *missing], cwd=folder)
    debs = {package: find_deb(package, folder) for package in packages}
    absent = [package for package, deb in debs.items() if deb is None]
    if absent:
        raise RuntimeError(f"apt-get download left no .deb for {absent} in {folder}")
    return debs


def extract_package(deb: Path, folder: Path) -> Path:
    """Unpack a ``.deb`` into ``folder`` (its file tree: ``usr/share/...``); reuse a finished one.

    A folder without the :data:`EXTRACTED_MARKER` (an interrupted unpack) is wiped and unpacked
    again.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    marker = folder / EXTRACTED_MARKER
    if marker.is_file() and marker.read_text() == Path(deb).name:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(folder)])
    marker.write_text(Path(deb).name)
    return folder


def deb_field(deb: Path, field: str) -> str:
    """One control field of a ``.deb`` (``dpkg-deb -f``), e.g. ``Version``."""
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


def package_licence(root: Path, package: str) -> str:
    """The first ``License:`` value of an unpacked package's ``usr/share/doc/<package>/copyright``.

    Returns:
        The licence short name, or ``"unknown (no copyright file)"`` / ``"unknown (no License:
        line)"``.
    """
    copyright_file = Path(root) / "usr" / "share" / "doc" / package / "copyright"
    if not copyright_file.is_file():
        return "unknown (no copyright file)"
    for line in copyright_file.read_text(errors="replace").splitlines():
        if line.lower().startswith("license:"):
            return line.split(":", 1)[1].strip()
    return "unknown (no License: line)"
