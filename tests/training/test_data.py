"""The training data: image_size auto fits the data; data too small for the config is reported."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tpsnet_plugin.training import TPSNetTrainer, build_dataset, load_config
from tpsnet_plugin.training.data import (
    dataset_fingerprint,
    fit_batch_to_dataset,
    fitting_image_size,
    small_domain_warnings,
)

REPO = Path(__file__).resolve().parents[2]


def folder_dataset(root, sides):
    rng = np.random.default_rng(0)
    for domain in ("a", "b"):
        for label in ("x", "y"):
            folder = root / domain / label
            folder.mkdir(parents=True)
            for i, side in enumerate(sides):
                pixels = rng.integers(0, 255, (side, side + 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.parametrize(("sides", "expected"), [([20, 40, 44], 40), ([300, 500, 640], 96), ([9, 10, 12], 16)])
def test_auto_image_size_is_the_median_shorter_side(tmp_path, sides, expected):
    folder_dataset(tmp_path, sides)
    config = load_config(overrides=["data.dataset=folder", f"data.root={tmp_path}", "data.domains=[a, b]",
                                    "data.image_size=auto"])
    dataset = build_dataset(config["data"])
    assert fitting_image_size(dataset) == expected
    assert dataset[0][0].shape == (3, expected, expected) and dataset.image_size == expected


def test_auto_image_size_of_digits_is_native():
    config = load_config(overrides=["data.image_size=auto", "data.subset_per_domain=10"])
    dataset = build_dataset(config["data"])
    assert dataset[0][0].shape == (3, 28, 28) and dataset.image_size == 28
    sized = build_dataset(load_config(overrides=["data.image_size=20", "data.subset_per_domain=10"])["data"])
    assert sized[0][0].shape == (3, 20, 20) and sized.image_size == 20


def test_small_domain_warnings_name_the_domain_the_sizes_and_the_fix():
    assert small_domain_warnings({"a": 40, "b": 400}, num_clusters=10, m_per_cluster=4) == []
    (message,) = small_domain_warnings({"a": 39, "b": 400}, num_clusters=10, m_per_cluster=4)
    assert message.startswith("domain 'a' has 39 images for 10 clusters")
    assert "(40 images)" in message and "data.num_clusters or synergy.m_per_cluster" in message


def test_fit_batch_to_dataset():
    assert fit_batch_to_dataset(256, 1000) == (256, None)
    assert fit_batch_to_dataset(256, 256) == (256, None)
    assert fit_batch_to_dataset(256, 1000, num_processes=8) == (125, "warmup.batch_size=256 is larger than the "
                                                                     "1000 images on 8 process(es): batches of "
                                                                     "125 are used instead")
    with pytest.raises(ValueError, match="needs at least 2 images per process"):
        fit_batch_to_dataset(256, 3, num_processes=2)
    # the synergy batch stays a multiple of m_per_cluster
    assert fit_batch_to_dataset(128, 30, key="synergy.batch_size", multiple_of=4)[0] == 28
    with pytest.raises(ValueError, match="synergy.batch_size needs at least 4 images"):
        fit_batch_to_dataset(128, 3, key="synergy.batch_size", multiple_of=4)


@pytest.mark.slow
def test_generic_recipe_on_a_tiny_folder_dataset_trains_and_says_what_it_changed(tmp_path):
    """30 images, a domain below clusters x m_per_cluster: the run finishes and its summary says so."""
    rng = np.random.default_rng(0)
    for domain, per_class in (("a", 12), ("b", 3)):
        for label in ("x", "y"):
            folder = tmp_path / "data" / domain / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = load_config(REPO / "configs" / "folder.yaml", [
        f"data.root={tmp_path / 'data'}", "data.domains=[a, b]", "data.num_workers=0",
        "model.rgb_kwargs={widths: [8, 8, 16, 16]}", "model.phase_kwargs={widths: [8, 8, 16, 16]}",
        "warmup.min_steps=2", "synergy.min_steps=2", "cluster.niter=5", "cluster.nredo=1", "prompts.epochs=1",
        "eval.plots=false", "accelerate.log_with=none",
    ], output_dir=str(tmp_path / "run"))
    with pytest.warns(UserWarning) as caught:
        trainer = TPSNetTrainer(config)
    small, batch = ("domain 'b' has 6 images for 2 clusters",
                    "warmup.batch_size=256 is larger than the 30 images on 1 process(es)")
    assert [str(w.message)[:len(small)] for w in caught].count(small) == 1
    assert any(str(w.message).startswith(batch) for w in caught)
    assert trainer.stages[0].batch_size == 30
    # the recipe's synergy batch of 128 would hold each of the 30 images 4 times or more: false negatives of
    # the instance loss
    assert any(str(w.message).startswith("synergy.batch_size=128 is larger than the 30 images") for w in caught)
    assert trainer.stages[-1].batch_size == 28
    summary = trainer.fit()
    assert summary["warnings"][0].startswith(small) and summary["warnings"][1].startswith(batch)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"][:2] == summary["warnings"][:2]


def test_class_names_for_the_clip():
    from tpsnet_plugin.training.data import class_names_of

    folder = {"dataset": "folder", "layout": "folder", "classes": None, "class_names": None}
    assert class_names_of(folder, ["alarm_clock", "Back-pack", "desk lamp"]) == ["alarm clock", "back pack",
                                                                              "desk lamp"]
    given = ["clock", "bag", "lamp"]
    assert class_names_of({**folder, "class_names": given}, ["a", "b", "c"]) == given
    with pytest.raises(ValueError, match="gives 2 names for 3 classes"):
        class_names_of({**folder, "class_names": ["clock", "bag"]}, ["a", "b", "c"])
    # list files without data.classes: the labels are numbers, no names exist
    assert class_names_of({**folder, "layout": "list"}, ["0", "1"]) is None
    assert class_names_of({**folder, "layout": "list", "classes": ["cat", "dog"]}, ["cat", "dog"]) == ["cat", "dog"]
    assert class_names_of({**folder, "dataset": "digits"}, [str(d) for d in range(10)])[7] == "7"


def test_fingerprint_follows_the_files_not_where_they_lie(tmp_path):
    folder_dataset(tmp_path / "here", [12, 14])
    config = load_config(overrides=["data.dataset=folder", "data.domains=[a, b]", "data.image_size=8"])

    def fingerprint(root):
        return dataset_fingerprint(build_dataset({**config["data"], "root": str(root)}))

    original = fingerprint(tmp_path / "here")
    shutil.copytree(tmp_path / "here", tmp_path / "copy")  # a copy elsewhere (new mtimes): the same data
    assert fingerprint(tmp_path / "copy") == original
    # an image replaced under its own name (same size: another PNG of the same noise shape)
    image = tmp_path / "copy" / "a" / "x" / "0.png"
    replaced = np.asarray(Image.open(image))[::-1].copy()
    Image.fromarray(replaced).save(image)
    changed = fingerprint(tmp_path / "copy")
    assert changed["content_sha256"] == original["content_sha256"]
    assert changed["files_sha256"] != original["files_sha256"]
    # a renamed file: the file list changes
    (tmp_path / "here" / "b" / "y" / "1.png").rename(tmp_path / "here" / "b" / "y" / "9.png")
    assert fingerprint(tmp_path / "here")["content_sha256"] != original["content_sha256"]


def test_one_class_is_refused(tmp_path):
    for domain in ("a", "b"):
        (tmp_path / domain / "only").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / domain / "only" / f"{i}.png")
    config = load_config(overrides=["data.dataset=folder", f"data.root={tmp_path}", "data.domains=[a, b]"])
    with pytest.raises(ValueError, match=r"one class \('only'\).*every image is a correct match"):
        build_dataset(config["data"])
