"""Tests for scripts/digits_folder.py: Digits domains written as a folder dataset."""

import numpy as np
import pytest

from tpsnet_plugin.data import build_folder_domains
from tpsnet_plugin.data.digits import load_domain


def test_written_folders_read_back_as_the_same_images(load_script, tmp_path):
    script = load_script("digits_folder")
    counts = script.write(tmp_path / "out", ["printed", "mnist-m"], per_domain=100)
    assert counts == {"printed": 100, "mnist-m": 100}
    dataset = build_folder_domains(tmp_path / "out", ["printed", "mnist-m"], image_size=28)
    assert len(dataset) == 200 and list(dataset.classes) == [str(d) for d in range(10)]
    images, labels = load_domain("mnist-m")
    part = dataset.datasets[1]
    for path, label in part.samples[:5]:
        index = int(path.stem if hasattr(path, "stem") else str(path).rsplit("/", 1)[1].split(".")[0])
        assert label == labels[index]
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(path)), images[index])
    with pytest.raises(FileExistsError, match="not empty"):
        script.write(tmp_path / "out", ["printed"])
