"""The icon themes the corpus is built from: Debian package, theme folder, file format, holdout."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_HOLDOUT", "THEMES", "ThemeSource"]


@dataclass(frozen=True)
class ThemeSource:
    """Where a theme comes from.

    Args:
        package: Debian package.
        folder: Theme folder under ``usr/share/icons`` in the package.
        format: ``"png"`` or ``"svg"``: the files used from it.
    """

    package: str
    folder: str
    format: str


THEMES = {
    "adwaita": ThemeSource("adwaita-icon-theme", "Adwaita", "png"),
    "breeze": ThemeSource("breeze-icon-theme", "breeze", "svg"),
    "elementary-xfce": ThemeSource("elementary-xfce-icon-theme", "elementary-xfce", "png"),
    "faenza": ThemeSource("faenza-icon-theme", "Faenza", "png"),
    "gnome": ThemeSource("gnome-icon-theme", "gnome", "png"),
    "moka": ThemeSource("moka-icon-theme", "Moka", "png"),
    "oxygen": ThemeSource("oxygen-icon-theme", "oxygen", "png"),
    "paper": ThemeSource("paper-icon-theme", "Paper", "png"),
    "papirus": ThemeSource("papirus-icon-theme", "Papirus", "svg"),
    "tango": ThemeSource("tango-icon-theme", "Tango", "png"),
    "yaru": ThemeSource("yaru-theme-icon", "Yaru", "png"),
}
# One style family (gnome-icon-theme 3.12 is drawn in the Tango style), held out together so that
# style stays unseen; the choice is explained in scripts/ICONS_PROVENANCE.md.
DEFAULT_HOLDOUT = ("tango", "gnome")
