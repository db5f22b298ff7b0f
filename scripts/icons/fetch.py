"""Step 1 of the icon corpus: download and unpack the theme packages and the SVG renderer.

``apt-get download`` puts the ``.deb`` files into ``<cache>/debs`` and ``dpkg-deb -x`` unpacks
them into ``<cache>/packages/<package>`` (helpers in ``scripts/debian_packages.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts import debian_packages
from scripts.icons.themes import THEMES

__all__ = ["SVG_RENDERER_PACKAGE", "fetch_svg_renderer", "fetch_themes", "renderer_version"]

SVG_RENDERER_PACKAGE = "librsvg2-bin"


def fetch_svg_renderer(cache: Path, update: bool, left_out: str) -> Path | None:
    """``rsvg-convert`` from :data:`SVG_RENDERER_PACKAGE`, fetched and unpacked into ``cache``; None
    (with a message naming what is ``left_out``) when it does not run on this machine."""
    debs = debian_packages.download_packages([SVG_RENDERER_PACKAGE], Path(cache) / "debs", update)
    root = debian_packages.extract_package(debs[SVG_RENDERER_PACKAGE],
                                           Path(cache) / "packages" / SVG_RENDERER_PACKAGE)
    candidate = root / "usr" / "bin" / "rsvg-convert"
    try:
        subprocess.run([str(candidate), "--version"], check=True, capture_output=True)
        return candidate
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"rsvg-convert from {SVG_RENDERER_PACKAGE} does not run here ({error}); {left_out} are left out",
              file=sys.stderr)
        return None


def fetch_themes(cache: Path, themes: list[str], svg: bool = True, update: bool = True
                 ) -> tuple[dict[str, Path], dict[str, dict[str, str]], Path | None]:
    """Download and unpack the themes' packages (and the SVG renderer) into the cache.

    Args:
        cache: Cache folder: ``.deb`` files go to ``cache/debs``, unpacked trees to
            ``cache/packages/<package>``.
        themes: Keys of :data:`~scripts.icons.themes.THEMES`.
        svg: Fetch ``rsvg-convert`` for the SVG themes; without it, or when it does not run, the
            SVG themes are dropped (with a message).
        update: Allow ``apt-get update`` (once) before fetching a missing package.

    Returns:
        ``(theme_dirs, packages, renderer)``: theme -> theme folder; theme -> ``package``,
        ``version``, ``licence``, ``deb``; the ``rsvg-convert`` path or None.
    """
    cache = Path(cache)
    renderer = None
    if svg and any(THEMES[theme].format == "svg" for theme in themes):
        renderer = fetch_svg_renderer(cache, update, left_out="the SVG themes")
    if renderer is None:
        dropped = [theme for theme in themes if THEMES[theme].format == "svg"]
        if dropped:
            print(f"leaving out the SVG themes {dropped} (no renderer)", file=sys.stderr)
        themes = [theme for theme in themes if theme not in dropped]
    packages = sorted({THEMES[theme].package for theme in themes})
    debs = debian_packages.download_packages(packages, cache / "debs", update)
    theme_dirs, info = {}, {}
    for theme in themes:
        source = THEMES[theme]
        deb = debs[source.package]
        root = debian_packages.extract_package(deb, cache / "packages" / source.package)
        theme_dirs[theme] = root / "usr" / "share" / "icons" / source.folder
        if not theme_dirs[theme].is_dir():
            raise RuntimeError(f"{deb.name} has no usr/share/icons/{source.folder}")
        info[theme] = {"package": source.package, "version": debian_packages.deb_field(deb, "Version"),
                       "licence": debian_packages.package_licence(root, source.package),
                       "deb": deb.name}
    return theme_dirs, info, renderer


def renderer_version(renderer: Path | None) -> str:
    """``rsvg-convert --version`` of ``renderer`` (for the provenance note), ``"none"`` without one."""
    if renderer is None:
        return "none"
    result = subprocess.run([str(renderer), "--version"], check=True, capture_output=True, text=True)
    return result.stdout.strip()
