"""The retrieval CLI: a trained run's model, a gallery folder, a query image."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from tpsnet_plugin import retrieve
from tpsnet_plugin.data import load_domain
from tpsnet_plugin.training import TPSNetTrainer, load_config

from .training.test_trainer import REPO, TINY

GALLERY_SIZE = 30


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieve") / "run"
    config = load_config(REPO / "configs" / "digits.yaml", [*TINY, "synergy.epochs=1"], output_dir=str(out))
    TPSNetTrainer(config).fit()
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the run's model and config, free to retrain and cache into."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    shutil.copytree(trained_run / "model", run / "model")
    return run


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    images, labels = load_domain("printed")
    folder.mkdir()
    for i in range(GALLERY_SIZE):
        Image.fromarray(images[i]).save(folder / f"{labels[i]}_{i:03d}.png")
    return folder


@pytest.fixture
def gallery_embed_calls(monkeypatch):
    """Record the size of every embed_images call that embeds a whole gallery."""
    calls, embed = [], retrieve.embed_images

    def counting(model, paths, *args, **kwargs):
        if len(paths) == GALLERY_SIZE:
            calls.append(len(paths))
        return embed(model, paths, *args, **kwargs)

    monkeypatch.setattr(retrieve, "embed_images", counting)
    return calls


def cache_files(run):
    return sorted((run / "retrieval_cache").glob("*.npy"))


def test_cli_ranks_gallery_caches_and_writes_grid(run_copy, gallery, tmp_path):
    query = sorted(gallery.iterdir())[0]
    grid = tmp_path / "grid.png"
    args = ["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(query), "--topk", "5"]
    results = retrieve.main([*args, "--grid", str(grid)])
    hits = results[0]["results"]
    assert len(hits) == 5 and grid.is_file()
    # The query is in the gallery: it is its own nearest neighbour.
    assert hits[0]["path"] == str(query)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    model, config = retrieve.load_trained_model(run_copy)
    expected = retrieve.embed_images(model, retrieve.list_images(gallery), config["data"]["image_size"])
    (cached,) = cache_files(run_copy)
    assert np.allclose(np.load(cached), expected.numpy(), atol=1e-5)
    assert [p.name for p in (run_copy / "retrieval_cache").iterdir()] == [cached.name]  # no temp left
    # --topk above the gallery size returns the whole gallery
    assert len(retrieve.main([*args[:-1], "100"])[0]["results"]) == GALLERY_SIZE


def test_second_call_reads_the_cache(run_copy, gallery, gallery_embed_calls):
    query = sorted(gallery.iterdir())[0]
    args = ["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(query), "--topk", "3"]
    first = retrieve.main(args)
    assert gallery_embed_calls == [GALLERY_SIZE]
    assert retrieve.main(args) == first
    assert gallery_embed_calls == [GALLERY_SIZE]  # not embedded again
    # The scores come from the cached file: shift its rows by one and the query's own embedding
    # (row 0 of the gallery) is now found at row 1, with the same score.
    (cached,) = cache_files(run_copy)
    np.save(cached, np.roll(np.load(cached), 1, axis=0))
    tampered = retrieve.main(args)[0]["results"][0]
    assert tampered["path"] == str(sorted(gallery.iterdir())[1])
    assert tampered["score"] == pytest.approx(first[0]["results"][0]["score"])
    assert gallery_embed_calls == [GALLERY_SIZE]


def test_retrained_weights_or_a_changed_gallery_invalidate_the_cache(run_copy, gallery, gallery_embed_calls):
    query = sorted(gallery.iterdir())[0]
    args = ["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(query)]
    retrieve.main(args)
    weights = run_copy / "model" / "model.safetensors"
    before, stat = weights.read_bytes(), weights.stat()
    # "Retrain": other values in the last tensor of the file, same shapes, same file size and
    # header, even the same modification time.
    state = load_file(str(weights))
    last = max(state, key=lambda name: before.find(state[name].numpy().tobytes()))
    state[last] = state[last] + 0.5
    save_file(state, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = weights.read_bytes()
    assert len(after) == len(before) and after[:4096] == before[:4096] and after != before
    retrieve.main(args)
    assert gallery_embed_calls == [GALLERY_SIZE] * 2
    assert len(cache_files(run_copy)) == 2
    # a gallery file rewritten (new size or modification time) invalidates it too
    os.utime(query, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    retrieve.main(args)
    assert gallery_embed_calls == [GALLERY_SIZE] * 3


def test_cli_errors_name_the_problem(trained_run, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="output dir of a finished run"):
        retrieve.load_trained_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="Gallery folder not found"):
        retrieve.list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        retrieve.list_images(tmp_path / "empty")
    for bad in ("0", "-3", "ten"):
        with pytest.raises(SystemExit) as exit_info:
            retrieve.main(["--checkpoint", str(trained_run), "--gallery", str(tmp_path), "--query", "q.png",
                           "--topk", bad])
        assert exit_info.value.code == 2
        assert "argument --topk" in capsys.readouterr().err


def test_load_scales_16_bit_and_float_images_like_the_datasets(tmp_path):
    """retrieve reads images with the datasets' loader: by range, not clipped or zeroed."""
    from tpsnet_plugin.data import default_transform

    transform = default_transform(4)  # the images are 4x4: the resize keeps the pixels
    sixteen = np.array([[0, 257, 1000, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "depth.png")  # mode I;16
    expected = np.rint(sixteen / 257) / 255
    assert np.allclose(retrieve._load(tmp_path / "depth.png", transform).numpy(), expected[None], atol=1e-6)
    unit = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(unit).save(tmp_path / "unit.tif")  # mode F
    expected = np.rint(unit.astype(np.float64) * 255) / 255
    assert np.allclose(retrieve._load(tmp_path / "unit.tif", transform).numpy(), expected[None], atol=1e-6)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert np.allclose(retrieve._load(tmp_path / "clear.png", transform).numpy(), 1.0)  # white
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(OSError, match="8-bit PNG or JPEG") as err:
        retrieve._load(tmp_path / "nan.tif", transform)
    assert str(tmp_path / "nan.tif") in str(err.value)


def test_damaged_weights_are_named_and_the_command_prints_one_line(run_copy, gallery, capsys):
    weights = run_copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="model.safetensors is damaged or truncated"):
        retrieve.load_trained_model(run_copy)
    query = next(gallery.iterdir())
    status = retrieve.cli(["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(query)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("retrieve: error: ") and "Traceback" not in err
