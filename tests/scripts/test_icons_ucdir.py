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
