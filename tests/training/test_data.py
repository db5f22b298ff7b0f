"""The training data: image_size auto fits the data."""

import numpy as np
import pytest
from PIL import Image

from tpsnet_plugin.training import build_dataset, load_config
from tpsnet_plugin.training.data import fitting_image_size


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
    assert dataset[0][0].shape == (3, expected, expected)


def test_auto_image_size_of_digits_is_native():
    config = load_config(overrides=["data.image_size=auto", "data.subset_per_domain=10"])
    assert build_dataset(config["data"])[0][0].shape == (3, 28, 28)
