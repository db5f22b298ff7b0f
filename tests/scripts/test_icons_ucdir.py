"""Tests for scripts/icons_ucdir.py: a folder dataset of icon themes (domains) and name groups (classes)."""

import pytest
from PIL import Image

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first)
from tpsnet_plugin.training.data import build_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, load_script):
    """A built icon corpus of three fake themes (two of them with every group)."""
    build_icons = load_script("build_icons")
    root = tmp_path_factory.mktemp("icons")
    names = {"alpha": ["folder-open", "folder-home", "mail-send", "weather-clear"],
             "beta": ["folder-open", "mail-read", "mail-send", "weather-fog"],
             "gamma": ["folder-open"]}
    themes = {}
    for theme, icons in names.items():
        for i, name in enumerate(icons):
            path = root / "themes" / theme / "48x48" / "apps" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), (40 * i, 100, 200)).save(path)
        themes[theme] = root / "themes" / theme
    result = build_icons.build_corpus(themes, root / "corpus", size=24, holdout=[])
    build_icons.write_marker(root / "corpus", result, 24, [])
    return root / "corpus"


def test_builds_a_folder_dataset_of_themes_and_name_groups(corpus, tmp_path, load_script):
    script = load_script("icons_ucdir")
    counts = script.build(tmp_path / "out", ("alpha", "beta"), ("folder", "mail", "weather"), corpus)
    assert counts == {("alpha", "folder"): 2, ("alpha", "mail"): 1, ("alpha", "weather"): 1,
                      ("beta", "folder"): 1, ("beta", "mail"): 2, ("beta", "weather"): 1}
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "alpha/folder/folder-home.png", "alpha/folder/folder-open.png", "alpha/mail/mail-send.png",
        "alpha/weather/weather-clear.png", "beta/folder/folder-open.png", "beta/mail/mail-read.png",
        "beta/mail/mail-send.png", "beta/weather/weather-fog.png"]
    dataset = build_dataset({**_folder_config(tmp_path / "out"), "domains": ["alpha", "beta"]})
    assert dataset.classes == ["folder", "mail", "weather"] and len(dataset) == 8


def test_a_group_missing_from_a_theme_and_a_non_empty_output_are_errors(corpus, tmp_path, load_script):
    script = load_script("icons_ucdir")
    with pytest.raises(ValueError, match=r"\('gamma', 'mail'\)"):
        script.build(tmp_path / "a", ("alpha", "gamma"), ("folder", "mail"), corpus)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        script.build(tmp_path / "b", ("alpha", "beta"), ("folder",), corpus)


def _folder_config(root):
    from tpsnet_plugin.training import default_config

    return {**default_config()["data"], "dataset": "folder", "root": str(root), "image_size": 24}


@pytest.fixture(scope="module")
def aliased_corpus(tmp_path_factory, load_script):
    """Two themes whose aliases (symlinks) draw one file under several names, like tango and gnome
    (no "mail-send": build_icons leaves gnome's out, its postage stamp shows a numeral)."""
    build_icons = load_script("build_icons")
    root = tmp_path_factory.mktemp("aliased")
    names = {"tango": ["folder-open", "folder-home", "mail-reply", "mail-read", "weather-fog", "edit-copy"],
             "gnome": ["folder-open", "folder-home", "folder-new", "mail-reply", "mail-read", "weather-fog",
                       "weather-clear", "edit-copy", "edit-cut"]}
    aliases = {"tango": {"gtk-open": "folder-open", "gtk-home": "folder-home", "stock_mail": "mail-reply",
                         "mail-replied": "mail-reply"},
               "gnome": {"gtk-open": "folder-open", "gtk-home": "folder-home", "stock_mail": "mail-reply"}}
    for theme, icons in names.items():
        folder = root / "themes" / theme / "48x48" / "apps"
        folder.mkdir(parents=True)
        for i, name in enumerate(icons):
            Image.new("RGB", (48, 48), (20 * i, 100, 200)).save(folder / f"{name}.png")
        for alias, target in aliases[theme].items():
            (folder / f"{alias}.png").symlink_to(f"{target}.png")
    themes = {theme: root / "themes" / theme for theme in names}
    result = build_icons.build_corpus(themes, root / "corpus", size=24, holdout=["tango", "gnome"])
    build_icons.write_marker(root / "corpus", result, 24, ["tango", "gnome"])
    return root / "corpus"


def test_auto_classes_are_the_first_words_with_enough_distinct_drawings_in_every_theme(
        aliased_corpus, tmp_path, load_script):
    script = load_script("icons_ucdir")
    counts = script.build(tmp_path / "out", ("tango", "gnome"), "auto", aliased_corpus, min_per_class=2)
    # "gtk" has 2 names per theme but they are aliases; "mail-replied" is tango's alias of "mail-reply";
    # "weather" and "edit" have one drawing in tango
    assert counts == {("tango", "folder"): 2, ("tango", "mail"): 2, ("gnome", "folder"): 3, ("gnome", "mail"): 2}
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "gnome/folder/folder-home.png", "gnome/folder/folder-new.png", "gnome/folder/folder-open.png",
        "gnome/mail/mail-read.png", "gnome/mail/mail-reply.png", "tango/folder/folder-home.png",
        "tango/folder/folder-open.png", "tango/mail/mail-read.png", "tango/mail/mail-reply.png"]
    assert script.build(tmp_path / "one", ("tango", "gnome"), "auto", aliased_corpus, min_per_class=1)[
        "tango", "weather"] == 1
    with pytest.raises(ValueError, match="no first word has 4 icons"):
        script.build(tmp_path / "none", ("tango", "gnome"), "auto", aliased_corpus, min_per_class=4)


def test_explicit_classes_keep_every_name_and_the_cli_accepts_auto(aliased_corpus, tmp_path, load_script, capsys):
    script = load_script("icons_ucdir")
    counts = script.build(tmp_path / "all", ("tango", "gnome"), ("gtk", "mail"), aliased_corpus)
    assert counts["tango", "gtk"] == 2 and counts["tango", "mail"] == 3  # aliases copied, as before
    assert script.build(tmp_path / "unique", ("tango", "gnome"), ("mail",), aliased_corpus,
                        unique=True)["tango", "mail"] == 2
    script.main(["--out", str(tmp_path / "cli"), "--themes", "tango", "gnome", "--classes", "auto",
                 "--min-per-class", "2", "--cache-dir", str(aliased_corpus)])
    out = capsys.readouterr().out
    assert "2 classes: folder mail" in out and "tango 4 images: folder 2, mail 2" in out
