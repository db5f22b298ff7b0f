"""The retrieval CLI: a trained run's model, a gallery folder, a query image."""

import numpy as np
import pytest
from PIL import Image

from tpsnet_plugin import retrieve
from tpsnet_plugin.data import load_domain
from tpsnet_plugin.training import TPSNetTrainer, load_config

from .training.test_trainer import REPO, TINY


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieve") / "run"
    config = load_config(REPO / "configs" / "digits.yaml", [*TINY, "stage2.epochs=1"], output_dir=str(out))
    TPSNetTrainer(config).fit()
    return out


def _write_digits(folder, domain, count):
    images, labels = load_domain(domain)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(images[i]).save(folder / f"{labels[i]}_{i:03d}.png")


def test_cli_ranks_gallery_caches_and_writes_grid(trained_run, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    _write_digits(gallery, "printed", 30)
    query = gallery / sorted(p.name for p in gallery.iterdir())[0]
    grid = tmp_path / "grid.png"
    args = ["--checkpoint", str(trained_run), "--gallery", str(gallery), "--query", str(query), "--topk", "5"]
    results = retrieve.main([*args, "--grid", str(grid)])
    hits = results[0]["results"]
    assert len(hits) == 5 and grid.is_file()
    # The query is in the gallery: it is its own nearest neighbour.
    assert hits[0]["path"] == str(query)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    model, config = retrieve.load_trained_model(trained_run)
    paths = retrieve.list_images(gallery)
    expected = retrieve.embed_images(model, paths, config["data"]["image_size"])
    cached = list((trained_run / "retrieval_cache").glob("*.npy"))
    assert len(cached) == 1 and np.allclose(np.load(cached[0]), expected.numpy(), atol=1e-5)
    retrieve.main(args)  # second call reads the cache
    assert len(list((trained_run / "retrieval_cache").glob("*.npy"))) == 1


def test_cli_errors_name_the_problem(trained_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="output dir of a finished run"):
        retrieve.load_trained_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="Gallery folder not found"):
        retrieve.list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        retrieve.list_images(tmp_path / "empty")
