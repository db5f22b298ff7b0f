"""Tests for the icon corpus: ``scripts/build_icons.py`` (steps in ``scripts/icons/``) and ``tpsnet_plugin.data.icons``.

No network: the themes are fake folders of a few PNGs written in tmp_path.
"""

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first)
from tpsnet_plugin.data.icons import (
    MANIFEST_COLUMNS,
    TEMPLATES,
    IncompleteCorpusError,
    caption_from_name,
    default_cache_dir,
    load_manifest,
)


@pytest.fixture(scope="module")
def builder():
    return importlib.import_module("scripts.build_icons")


def _icon(path: Path, size: int, colour=(200, 30, 30), mode: str = "RGBA", height: int | None = None) -> None:
    """A `colour` square (the inner half) on a transparent background (white for mode RGB)."""
    height = height or size
    box = (size // 4, height // 4, size // 4 + size // 2, height // 4 + height // 2)
    if mode == "P":  # palette with a transparent index 0
        image = Image.new("P", (size, height), 0)
        image.putpalette([0, 0, 0, *colour] + [0] * 762)
        image.paste(1, box)
        save = {"transparency": 0}
    else:
        background = (255, 255, 255, 255) if mode == "RGB" else (0, 0, 0, 0)
        image = Image.new("RGBA", (size, height), background)
        image.paste((*colour, 255), box)
        image, save = image.convert(mode), {}
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)


def _fake_themes(root: Path) -> dict[str, Path]:
    """Three small themes in freedesktop layouts, with aliases, small and symbolic files, digits."""
    alpha, beta, gamma = root / "Alpha", root / "beta", root / "Gamma"
    for size in (16, 32, 48, 96):
        _icon(alpha / f"{size}x{size}" / "actions" / "document-save.png", size)
    _icon(alpha / "48x48" / "apps" / "audio-volume-high.png", 48, colour=(20, 20, 200))
    (alpha / "48x48" / "apps" / "gtk-volume.png").symlink_to("audio-volume-high.png")
    (alpha / "48x48" / "apps" / "broken-link.png").symlink_to("nowhere.png")
    _icon(alpha / "48x48" / "apps" / "edit-copy-symbolic.png", 48)
    _icon(alpha / "16x16" / "apps" / "tiny-only.png", 16)
    _icon(alpha / "48x48" / "apps" / "input-dialpad.png", 48)
    _icon(alpha / "48x48" / "apps" / "keyboard-key-7.png", 48)
    _icon(alpha / "48x48" / "animations" / "process-working.png", 48, height=192)
    _icon(alpha / "48x48" / "apps" / "wide-strip.png", 150, height=48)
    for context in ("places", "apps"):  # same name, same size, two contexts: tie -> first path
        _icon(alpha / "64x64" / context / "user-home.png", 64,
              colour=(0, 200, 0) if context == "apps" else (0, 0, 0))
    _icon(beta / "actions" / "64" / "document-save.png", 64, colour=(0, 120, 0), mode="P")
    _icon(beta / "apps" / "48" / "audio-volume-high.png", 40, height=32, mode="LA")
    _icon(beta / "apps" / "48" / "zero.png", 48)
    _icon(gamma / "scalable" / "actions" / "document-save.png", 128, colour=(10, 10, 10))
    _icon(gamma / "32x32" / "apps" / "edit-copy.png", 32, mode="RGB")
    return {"alpha": alpha, "beta": beta, "gamma": gamma}


@pytest.fixture
def themes(tmp_path):
    return _fake_themes(tmp_path / "themes")


def _build(builder, themes, out, **kwargs):
    result = builder.build_corpus(themes, out, size=kwargs.pop("size", 24), **kwargs)
    builder.write_marker(out, result, 24, kwargs.get("holdout", builder.DEFAULT_HOLDOUT))
    return result


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("name", "caption"), [
    ("audio-volume-high", "audio volume high"),
    ("gtk_media_play", "gtk media play"),
    ("org.gnome.Maps", "org gnome maps"),
    ("Battery-Level_40", "battery level 40"),
    ("a--b__c", "a b c"),
])
def test_caption_is_the_name_as_lowercase_words(name, caption):
    assert caption_from_name(name) == caption


def test_templates_take_one_caption():
    assert len(TEMPLATES) >= 3 and len(set(TEMPLATES)) == len(TEMPLATES)
    for template in TEMPLATES:
        assert template.count("{}") == 1
        assert "audio volume high" in template.format("audio volume high")


def test_script_reexports_templates(builder):
    assert builder.TEMPLATES is TEMPLATES


STEP_MODULES = ("themes", "fetch", "candidates", "convert", "manifest", "corpus")


def test_script_reexports_each_step_name_from_its_one_home(builder):
    homes = {}
    for module_name in STEP_MODULES:
        module = importlib.import_module(f"scripts.icons.{module_name}")
        for name in module.__all__:
            assert name not in homes, f"{name} is exported by two step modules"
            homes[name] = getattr(module, name)
            if callable(homes[name]):  # defined there, not imported from elsewhere
                assert homes[name].__module__ == module.__name__, name
    for name in set(builder.__all__) - {"main", "TEMPLATES"}:
        assert getattr(builder, name) is homes[name], name


@pytest.mark.parametrize("name", [
    "0", "7", "42", "keyboard-key-5", "keyboard_key_a", "input-dialpad", "number-one", "one", "nine",
    "digit", "x-office-calendar", "accessories-calculator", "format-list-numbered",
    "format-list-ordered", "zoom-original", "battery-040", "gsm-3g-high", "audio-x-mp3",
    "gnome-2048", "preferences-system-time", "alarm-clock", "application-x-binary",
    "format-text-superscript", "gnome-sudoku", "numlock", "num-lock-on", "audio-volume-zero-panel",
    "applications-mathematics", "media-playlist-repeat-one", "media-repeat-single",
    "application-octet-stream", "application-x-object", "org.kde.plasma.fifteenpuzzle", "gnome-mines",
    "utilities-system-monitor", "office-chart-bar-percentage", "org.kde.plasma.eventcalendar",
    "google-agenda", "kronometer", "com.github.zren.simpleweather", "x-office-calendar",
    "application-x-firmware", "application-x-msdownload", "view-financial-categories",
    "konsolekalendar", "application-vnd.oasis.opendocument.formula-template",
])
def test_digit_names_are_excluded(builder, name):
    assert builder.is_digit_icon_name(name)


@pytest.mark.parametrize("name", [
    "audio-volume-high", "document-save", "phone", "zoom-in", "timeline", "someone", "bone",
    "network-wireless", "user-home", "org.gnome.Maps", "preferences-desktop-font",
    "object-rotate-clockwise", "weather-clear", "media-playlist-repeat", "update", "system-run",
])
def test_ordinary_names_are_kept(builder, name):
    assert not builder.is_digit_icon_name(name)


def test_build_selects_one_largest_image_per_theme_and_name(builder, themes, tmp_path):
    result = _build(builder, themes, tmp_path / "out", holdout=["beta"])
    rows = {(row["theme"], row["name"]): row for row in result.rows}
    assert sorted(rows) == [
        ("alpha", "audio-volume-high"), ("alpha", "document-save"), ("alpha", "gtk-volume"),
        ("alpha", "user-home"),
        ("beta", "audio-volume-high"), ("beta", "document-save"),
        ("gamma", "document-save"), ("gamma", "edit-copy"),
    ]
    # largest source wins
    assert rows["alpha", "document-save"]["source"] == "96x96/actions/document-save.png"
    assert rows["alpha", "document-save"]["source_size"] == "96"
    assert rows["gamma", "document-save"]["source_size"] == "128"
    assert rows["beta", "audio-volume-high"]["source_size"] == "40"  # longer side of 40x32
    # equal sizes: the first relative path ("64x64/apps" < "64x64/places")
    assert rows["alpha", "user-home"]["source"] == "64x64/apps/user-home.png"
    pixel = Image.open(tmp_path / "out" / rows["alpha", "user-home"]["path"]).getpixel((12, 12))
    assert pixel == (0, 200, 0)
    # an alias is its own name, drawn from the real file, which the source column names
    assert rows["alpha", "gtk-volume"]["source"] == "48x48/apps/audio-volume-high.png"
    assert (Image.open(tmp_path / "out" / rows["alpha", "gtk-volume"]["path"]).tobytes()
            == Image.open(tmp_path / "out" / rows["alpha", "audio-volume-high"]["path"]).tobytes())
    assert result.source_files["alpha"] == 3  # document-save, audio-volume-high, user-home
    skipped = result.skipped["alpha"]
    assert skipped["symbolic"] == 1 and skipped["broken or outside link"] == 1
    assert skipped["under 32 px"] == 2  # 16x16 document-save and tiny-only
    assert skipped["animation"] == 1 and skipped["strip (aspect > 2)"] == 1
    assert skipped["digit name"] == 2
    assert result.skipped["beta"]["digit name"] == 1


def test_images_are_rgb_squares_with_transparency_on_white(builder, themes, tmp_path):
    result = _build(builder, themes, tmp_path / "out", holdout=[])
    for row in result.rows:
        image = Image.open(tmp_path / "out" / row["path"])
        assert image.mode == "RGB" and image.size == (24, 24)
        pixels = np.asarray(image)
        assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # transparent -> white
        assert (pixels[12, 12] < 250).any()  # the drawn square survives
    # the non-square beta source (40x32) is padded on white, aspect kept: top rows white
    row = next(r for r in result.rows if r["theme"] == "beta" and r["name"] == "audio-volume-high")
    pixels = np.asarray(Image.open(tmp_path / "out" / row["path"]))
    assert (pixels[:3] == 255).all() and (pixels[-3:] == 255).all()
    assert (pixels[12, 12] < 250).any()


def test_half_transparent_pixels_blend_with_white(builder):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    out = np.asarray(builder.to_square_rgb(image, 8))
    assert out.shape == (8, 8, 3)
    assert np.all(np.abs(out.astype(int) - 127) <= 1)


def test_holdout_is_whole_themes(builder, themes, tmp_path):
    result = _build(builder, themes, tmp_path / "out", holdout=["beta", "gamma"])
    for row in result.rows:
        assert row["split"] == ("holdout" if row["theme"] in ("beta", "gamma") else "train")
    assert {row["theme"] for row in result.rows if row["split"] == "holdout"} == {"beta", "gamma"}
    records = load_manifest(tmp_path / "out")
    assert all(record.theme in ("beta", "gamma") for record in records if record.split == "holdout")
    with pytest.raises(ValueError, match="holdout"):
        builder.build_corpus(themes, tmp_path / "other", size=24, holdout=["tango"])


def test_build_is_deterministic(builder, themes, tmp_path):
    _build(builder, themes, tmp_path / "one", holdout=["beta"])
    _build(builder, dict(reversed(list(themes.items()))), tmp_path / "two", holdout=["beta"])
    first, second = _tree_hashes(tmp_path / "one"), _tree_hashes(tmp_path / "two")
    assert "manifest.csv" in first and "COMPLETE" in first
    assert len([path for path in first if path.startswith("images/")]) == 8
    assert first == second


def test_rebuild_replaces_previous_images(builder, themes, tmp_path):
    out = tmp_path / "out"
    _build(builder, themes, out, holdout=[])
    stale = out / "images" / "alpha" / "stale.png"
    stale.write_bytes(b"old")
    _build(builder, {"alpha": themes["alpha"]}, out, holdout=[])
    assert not stale.exists() and not (out / "images" / "beta").exists()


def test_manifest_is_sorted_with_the_documented_columns(builder, themes, tmp_path):
    _build(builder, themes, tmp_path / "out", holdout=["beta"])
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
    assert [(row["theme"], row["name"]) for row in rows] == sorted((row["theme"], row["name"]) for row in rows)
    assert all(row["path"] == f"images/{row['theme']}/{row['name']}.png" for row in rows)
    assert all(row["caption"] == caption_from_name(row["name"]) for row in rows)
    records = load_manifest(tmp_path / "out")
    assert [record.name for record in records] == [row["name"] for row in rows]
    assert records[0].path.is_absolute() and records[0].path.is_file()


def test_partial_build_raises_a_clear_error(builder, themes, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(IncompleteCorpusError, match="scripts.build_icons --cache-dir"):
        load_manifest(out)  # nothing built
    builder.build_corpus(themes, out, size=24, holdout=[])  # no marker: interrupted before the end
    with pytest.raises(IncompleteCorpusError, match=r"interrupted build.*scripts.build_icons --cache-dir"):
        load_manifest(out)
    builder.write_marker(out, builder.build_corpus(themes, out, size=24, holdout=[]), 24, [])
    assert load_manifest(out)
    with open(out / "manifest.csv", "a") as handle:  # manifest changed after the marker
        handle.write("images/x/y.png,x,y,y,48,train,y.png\n")
    with pytest.raises(IncompleteCorpusError, match=f"sha256.*scripts.build_icons --cache-dir {out}"):
        load_manifest(out)
    builder.write_marker(out, builder.build_corpus(themes, out, size=24, holdout=[]), 24, [])
    shutil.rmtree(out / "images" / "gamma")
    with pytest.raises(IncompleteCorpusError, match="missing"):
        load_manifest(out)
    assert len(load_manifest(out, check_files=False)) == 8
    (out / "COMPLETE").write_text("not json")
    with pytest.raises(IncompleteCorpusError, match="unreadable"):
        load_manifest(out)


def test_a_new_build_removes_the_old_marker_first(builder, themes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _build(builder, themes, out, holdout=[])
    # the build dies midway (build_corpus looks the converter up in its own module)
    monkeypatch.setattr(importlib.import_module("scripts.icons.corpus"), "to_square_rgb", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        builder.build_corpus(themes, out, size=24, holdout=[])
    with pytest.raises(IncompleteCorpusError, match="interrupted build"):
        load_manifest(out)


def test_marker_records_the_manifest_hash(builder, themes, tmp_path):
    result = _build(builder, themes, tmp_path / "out", holdout=["beta"])
    marker = json.loads((tmp_path / "out" / "COMPLETE").read_text())
    digest = hashlib.sha256((tmp_path / "out" / "manifest.csv").read_bytes()).hexdigest()
    assert marker["manifest_sha256"] == digest == result.manifest_sha256
    assert marker["images"] == 8 and marker["holdout"] == ["beta"]


def test_default_cache_dir_follows_tpsnet_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TPSNET_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "icons"
    monkeypatch.delenv("TPSNET_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path("~/.cache/tpsnet_plugin/icons").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tpsnet_plugin" / "icons"


def test_svg_size_reads_width_height_or_viewbox(builder, tmp_path):
    cases = {
        '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48">': (48, 48),
        '<svg width="64px" height="32px" viewBox="0 0 10 10">': (64, 32),
        "<svg viewBox='0 0 22 22' width='100%'>": (22, 22),
        '<?xml version="1.0"?>\n<svg\n  version="1.1"\n  viewBox="0,0,16,16">': (16, 16),
        "<svg>": None,
    }
    for index, (head, size) in enumerate(cases.items()):
        path = tmp_path / f"{index}.svg"
        path.write_text(head + "</svg>")
        assert builder.svg_size(path) == size, head


def test_provenance_lists_packages_counts_and_holdout(builder, themes, tmp_path):
    out = tmp_path / "out"
    result = builder.build_corpus(themes, out, size=24, holdout=["beta"])
    packages = {theme: {"package": f"{theme}-icon-theme", "version": "1.0-1", "licence": "GPL-3+"}
                for theme in themes}
    builder.write_provenance(out / "PROVENANCE.md", result, packages, 24, ["beta"], "none")
    text = (out / "PROVENANCE.md").read_text()
    assert "| alpha | `alpha-icon-theme` | 1.0-1 | GPL-3+ | png | 4 | 3 | train |" in text
    assert "| beta | `beta-icon-theme` | 1.0-1 | GPL-3+ | png | 2 | 2 | holdout |" in text
    assert "Holdout (whole themes, split `holdout` in the manifest): beta" in text
    assert f"scripts.build_icons --cache-dir {out}" in text


def test_renderer_version_is_the_first_output_or_none(tmp_path):
    from scripts.icons.fetch import renderer_version

    assert renderer_version(None) == "none"
    fake = tmp_path / "rsvg-convert"
    fake.write_text("#!/bin/sh\necho 'rsvg-convert version 2.54.7'\n")
    fake.chmod(0o755)
    assert renderer_version(fake) == "rsvg-convert version 2.54.7"


def test_package_licence_reads_the_first_license_line(tmp_path):
    from scripts import debian_packages
    doc = tmp_path / "usr" / "share" / "doc" / "pkg"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: x\n\nFiles: *\nCopyright: me\nLicense: GPL-3+\n\n"
                                   "Files: a\nLicense: CC-BY-SA-4.0\n")
    assert debian_packages.package_licence(tmp_path, "pkg") == "GPL-3+"
    assert debian_packages.package_licence(tmp_path, "other").startswith("unknown")


def _rsvg_convert():
    found = shutil.which("rsvg-convert")
    if found:
        return found
    cached = default_cache_dir() / "packages" / "librsvg2-bin" / "usr" / "bin" / "rsvg-convert"
    return str(cached) if cached.is_file() else None


@pytest.mark.skipif(_rsvg_convert() is None, reason="no rsvg-convert (librsvg2-bin) here")
def test_svg_theme_is_rendered_at_the_target_size(builder, tmp_path):
    theme = tmp_path / "vector"
    for size, colour in ((16, "#000000"), (48, "#0000ff")):
        folder = theme / f"{size}x{size}" / "apps"
        folder.mkdir(parents=True)
        (folder / "user-home.svg").write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">'
            f'<rect x="{size / 4}" y="{size / 4}" width="{size / 2}" height="{size / 2}" fill="{colour}"/></svg>')
    result = builder.build_corpus({"vector": theme}, tmp_path / "out", size=32, holdout=[],
                                  formats={"vector": "svg"}, svg_renderer=_rsvg_convert())
    assert [(row["name"], row["source"], row["source_size"]) for row in result.rows] == [
        ("user-home", "48x48/apps/user-home.svg", "48")]
    pixels = np.asarray(Image.open(tmp_path / "out" / result.rows[0]["path"]))
    assert pixels.shape == (32, 32, 3)
    assert (pixels[0, 0] == 255).all() and tuple(pixels[16, 16]) == (0, 0, 255)
    assert result.skipped["vector"]["under 32 px"] == 1
    with pytest.raises(ValueError, match="svg_renderer"):
        builder.build_corpus({"vector": theme}, tmp_path / "other", size=32, holdout=[],
                             formats={"vector": "svg"})


def test_cli_help_and_holdout_default(builder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        builder.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--cache-dir" in out and "--holdout" in out and "tango gnome" in out
    assert set(builder.DEFAULT_HOLDOUT) <= set(builder.THEMES)


def test_reviewed_digit_files_are_left_out_with_their_aliases(builder, themes):
    candidates, skipped = builder.find_candidates(themes["alpha"], "png", frozenset({"audio-volume-high.png"}))
    assert "audio-volume-high" not in candidates and "gtk-volume" not in candidates
    assert "document-save" in candidates
    assert skipped["digit image (reviewed)"] == 2
    assert all(isinstance(files, frozenset) for files in builder.DIGIT_SOURCE_FILES.values())
    assert set(builder.DIGIT_SOURCE_FILES) <= set(builder.THEMES)
