"""The retrieval CLI: a trained run's model, a gallery folder, a query image."""

import copy
import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from tpsnet_plugin import retrieve
from tpsnet_plugin.data import DomainImageFolder, default_transform, load_domain
from tpsnet_plugin.errors import WeightsFileError
from tpsnet_plugin.models import TPSNet, create_tpsnet
from tpsnet_plugin.training import TPSNetTrainer
from tpsnet_plugin.training.config import ConfigError

GALLERY_SIZE = 30


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("retrieve")
    TPSNetTrainer(tiny_config(root, "synergy.epochs=1")).fit()
    return root / "run"


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
    expected = retrieve.embed_images(model, retrieve.list_images(gallery), config["image_size"])
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


def run_cli(args, capsys) -> tuple[int, str]:
    """The command's exit status and its stderr, checked to hold no traceback."""
    status = retrieve.cli(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def test_sideways_phone_photos_are_used_upright(run_copy, gallery, tmp_path):
    """A query stored turned left with EXIF orientation 6 finds its upright original at score 1."""
    original = sorted(gallery.iterdir())[3]
    pixels = np.asarray(Image.open(original))
    sideways = tmp_path / "phone.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    Image.fromarray(np.rot90(pixels, 1).copy()).save(sideways, exif=exif)
    transform = default_transform(28)
    assert retrieve._load(sideways, transform).equal(retrieve._load(original, transform))
    results = retrieve.main(["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(sideways)])
    best = results[0]["results"][0]
    assert best["path"] == str(original) and best["score"] == pytest.approx(1.0, abs=1e-5)


def test_hidden_and_appledouble_files_are_skipped_like_training(run_copy, gallery, capsys):
    """``._x.png`` resource forks, ``.DS_Store`` and hidden folders: skipped by the training walk's rule."""
    names = sorted(p.name for p in gallery.iterdir())
    (gallery / f"._{names[0]}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(40))
    (gallery / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (gallery / ".thumbnails").mkdir()
    shutil.copy(gallery / names[0], gallery / ".thumbnails" / names[0])  # a readable image, still hidden
    listed = retrieve.list_images(gallery)
    assert [p.name for p in listed] == names
    # The same files as a training domain folder holding the gallery as its one class.
    shutil.copytree(gallery, gallery.parent / "root" / "domain" / "cls")
    training = DomainImageFolder(gallery.parent / "root", "domain")
    assert sorted(Path(path).name for path, _ in training.samples) == names
    status, err = run_cli(["--checkpoint", str(run_copy), "--gallery", str(gallery),
                           "--query", str(gallery / names[0]), "--topk", "3"], capsys)
    assert status == 0 and err == ""


@pytest.mark.parametrize("damage", ["truncated", "empty", "not an npy file", "other shape"])
def test_damaged_cache_is_named_in_a_warning_and_rebuilt(run_copy, gallery, gallery_embed_calls, capsys, damage):
    query = sorted(gallery.iterdir())[0]
    args = ["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", str(query)]
    first = retrieve.main(args)
    (cache,) = cache_files(run_copy)
    good = cache.read_bytes()
    cache.write_bytes({
        "truncated": good[:len(good) // 2],
        "empty": b"",
        "not an npy file": b"<html>proxy error</html>",
        "other shape": _npy_bytes(np.ones((3, 4), dtype=np.float32)),
    }[damage])
    with pytest.warns(UserWarning, match=f"the retrieval cache {cache} is damaged .*; rebuilding it"):
        assert retrieve.main(args) == first
    assert cache.read_bytes() == good and gallery_embed_calls == [GALLERY_SIZE] * 2
    # From the command line: one warning line naming the file, then the results.
    cache.write_bytes(good[:100])
    status, err = run_cli(args, capsys)
    assert status == 0 and err.count("\n") == 1
    assert err.startswith(f"retrieve: warning: the retrieval cache {cache} is damaged")
    assert cache.read_bytes() == good


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def read_only_run(run_copy, monkeypatch):
    """The run folder made read-only (a shared model store): chmod a-w, and where that does not
    stop writes (root), writes under it fail as on a read-only mount."""
    paths = [run_copy, *run_copy.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(modes[path] & ~0o222)
    if os.access(run_copy, os.W_OK):
        save = retrieve.atomic_save_numpy

        def refuse(path, array):
            if Path(path).is_relative_to(run_copy):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            save(path, array)

        monkeypatch.setattr(retrieve, "atomic_save_numpy", refuse)
    yield run_copy
    for path in reversed(paths):
        path.chmod(modes[path])


def test_read_only_run_folder_caches_in_the_user_cache(read_only_run, gallery, gallery_embed_calls, tmp_path,
                                                        monkeypatch, capsys):
    monkeypatch.setenv("TPSNET_CACHE", str(tmp_path / "user cache"))
    user = tmp_path / "user cache" / "retrieval"
    query = sorted(gallery.iterdir())[0]
    args = ["--checkpoint", str(read_only_run), "--gallery", str(gallery), "--query", str(query)]
    status, err = run_cli(args, capsys)
    assert status == 0 and err.count("\n") == 1
    assert err.startswith(f"retrieve: warning: cannot write the retrieval cache to {read_only_run / 'retrieval_cache'}")
    assert err.rstrip().endswith(f"cached in {user} instead")
    assert len(list(user.glob("*.npy"))) == 1 and not cache_files(read_only_run)
    # The next call reads the user cache: no warning, the gallery is not embedded again.
    assert run_cli(args, capsys) == (0, "") and gallery_embed_calls == [GALLERY_SIZE]
    # Neither folder writable (TPSNET_CACHE names a file): no cache, one warning, still answered.
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("TPSNET_CACHE", str(tmp_path / "a file"))
    status, err = run_cli(args, capsys)
    assert status == 0 and err.count("\n") == 1 and "the gallery is not cached" in err
    assert gallery_embed_calls == [GALLERY_SIZE] * 2


def _other_model_weights(run, **changes) -> None:
    """Replace the run's weights by those of another architecture (the config and meta stay)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    model_config = {**copy.deepcopy(config["model"]), **changes.get("model", {})}
    model = create_tpsnet(model_config, changes.get("embed_dim", 64), 2, 10, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("changes, detail", [
    ({"model": {"rgb_kwargs": {"widths": [8, 16, 16, 64]}}}, "tensor shapes differ"),
    ({"embed_dim": 32}, r"shapes differ \(first: backbone.rgb_proj.weight is \[32, 32\] in the file, \[64, 32\]"),
    ({"model": {"phase_prior": False}}, "tensors missing"),
])
def test_weights_of_another_architecture_are_one_clear_error(run_copy, gallery, capsys, changes, detail):
    _other_model_weights(run_copy, **changes)
    weights = run_copy / "model" / "model.safetensors"
    with pytest.raises(WeightsFileError, match=detail):
        retrieve.load_trained_model(run_copy)
    status, err = run_cli(["--checkpoint", str(run_copy), "--gallery", str(gallery),
                           "--query", str(next(gallery.iterdir()))], capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"retrieve: error: {weights} holds the weights of another model")
    assert "use the weights and config of one run" in err


def _as_written_before_config_json(run) -> None:
    """The model folder of a run from before model/config.json: sizes in model_meta.json, the rest in config.yaml."""
    config = json.loads((run / "model" / "config.json").read_text())
    (run / "model" / "config.json").unlink()
    (run / "model" / "model_meta.json").write_text(json.dumps(
        {key: config[key] for key in ("embed_dim", "num_domains", "num_clusters", "domain_names", "classes",
                                      "image_size")}))


def test_a_run_written_before_config_json_still_loads(run_copy):
    model, config = retrieve.load_trained_model(run_copy)
    _as_written_before_config_json(run_copy)
    old_model, old_config = retrieve.load_trained_model(run_copy)
    assert old_config["image_size"] == config["image_size"] and old_config["model"] == config["model"]
    images = torch.rand(3, 3, config["image_size"], config["image_size"])
    assert torch.equal(old_model(images), model(images))


def test_the_model_folder_describes_itself(run_copy, tmp_path):
    # model/ alone (copied away from its run) is enough to rebuild and use the model
    shutil.copytree(run_copy / "model", tmp_path / "elsewhere")
    model = TPSNet.from_pretrained(tmp_path / "elsewhere")
    reference, _ = retrieve.load_trained_model(run_copy)
    size = model.config["image_size"]
    assert model.config["domain_names"] == ["handwritten-mnist", "printed"] and len(model.config["classes"]) == 10
    assert len(model.config["normalisation"]["rgb_mean"]) == 3
    images = torch.rand(2, 3, size, size)
    assert torch.equal(model(images), reference(images))


@pytest.mark.parametrize("name, content, error, problem, legacy", [
    ("model/config.json", '{"embed_dim": 64', WeightsFileError, "is damaged", False),
    ("model/config.json", "[1, 2]", WeightsFileError, "not a JSON object", False),
    ("model/config.json", '{"model": {}, "embed_dim": "64", "num_domains": 2, "num_clusters": 10, "image_size": 16}',
     WeightsFileError, "positive integers", False),
    ("config.yaml", "model: [unclosed\n", ConfigError, "is not valid YAML", True),
    ("config.yaml", "", ConfigError, "has no model and data sections", True),
    ("config.yaml", "- a list\n", ConfigError, "must hold a mapping", True),
    ("config.yaml", b"model: caf\xe9\n", ConfigError, "is not UTF-8", True),
    ("config.yaml", "model: {rgb_backbone: no_such_net}\ndata: {image_size: 16}\n", ConfigError,
     "does not describe a model", True),
    ("model/model_meta.json", '{"embed_dim": 64', WeightsFileError, "is damaged", True),
    ("model/model_meta.json", '{"embed_dim": "64", "num_domains": 2, "num_clusters": 10}', WeightsFileError,
     "positive integers", True),
])
def test_a_damaged_model_config_is_one_line_naming_it(run_copy, gallery, capsys, name, content, error, problem,
                                                      legacy):
    if legacy:
        _as_written_before_config_json(run_copy)
    path = run_copy / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(error, match=problem):
        retrieve.load_trained_model(run_copy)
    status, err = run_cli(["--checkpoint", str(run_copy), "--gallery", str(gallery),
                           "--query", str(next(gallery.iterdir()))], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("retrieve: error: ")
    assert str(path) in err


def test_checkpoint_may_be_the_model_folder_or_a_hub_repo(run_copy, gallery, tmp_path, monkeypatch,
                                                         gallery_embed_calls):
    import huggingface_hub

    query = str(sorted(gallery.iterdir())[0])
    expected = retrieve.main(["--checkpoint", str(run_copy), "--gallery", str(gallery), "--query", query])
    by_folder = retrieve.main(["--checkpoint", str(run_copy / "model"), "--gallery", str(gallery), "--query", query])
    assert by_folder == expected and gallery_embed_calls == [GALLERY_SIZE]  # the run's cache serves both
    snapshot = tmp_path / "hub" / "snapshot"
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(run_copy / "model" / name, snapshot / name)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(snapshot))
    monkeypatch.chdir(tmp_path)
    by_hub = retrieve.main(["--checkpoint", "someone/tpsnet-digits", "--gallery", str(gallery), "--query", query])
    assert [hit["path"] for hit in by_hub[0]["results"]] == [hit["path"] for hit in expected[0]["results"]]
