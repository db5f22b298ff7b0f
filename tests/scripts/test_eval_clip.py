"""Tests for scripts/eval_clip.py and scripts/export_clip_weights.py: reading CLIP weights files.

A damaged file, one holding pickled code, weights of another model or weights trained on a theme the
corpus holds out are one line ``<script>: error: ...`` naming the file and the fix (exit status 2),
and nothing is unpickled.
"""

import json

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first, registers the models)

NAMES = ["folder-open", "mail-send", "weather-clear", "user-home"]


@pytest.fixture(scope="module")
def eval_clip(load_script):
    return load_script("eval_clip")


@pytest.fixture(scope="module")
def export_clip(load_script):
    return load_script("export_clip_weights")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, load_script):
    """An icon corpus holding out tango and gnome (four names each), trained on alpha; and the same
    themes built with no holdout."""
    build_icons = load_script("build_icons")
    root = tmp_path_factory.mktemp("icons")
    themes = {}
    for t, theme in enumerate(("alpha", "tango", "gnome")):
        for i, name in enumerate(NAMES):
            path = root / "themes" / theme / "48x48" / "apps" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), (60 * i, 80 * t, 200 - 40 * i)).save(path)
        themes[theme] = root / "themes" / theme
    for out, holdout in (("corpus", ["gnome", "tango"]), ("no-holdout", [])):
        build_icons.write_marker(root / out, build_icons.build_corpus(themes, root / out, size=24, holdout=holdout),
                                 24, holdout)
    return root / "corpus", root / "no-holdout"


def _weights(path, model="tpsnet-tiny-clip", train_themes=("alpha",), metadata=True):
    """Random weights of ``model`` as scripts/pretrain_clip.py writes them (metadata: model, training themes)."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in open_clip.create_model(model).state_dict().items()}
    if path.suffix == ".pt":
        torch.save(state, path)
    else:
        meta = {"model": model, "steps": "1", "corpus": "icons", "train_themes": json.dumps(sorted(train_themes))}
        save_file(state, str(path), metadata=meta if metadata else None)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("weights") / "model.safetensors")


def _eval(eval_clip, corpus, weights, tmp_path, *extra):
    return eval_clip.main(["--weights", str(weights), "--cache-dir", str(corpus), "--output",
                           str(tmp_path / "result.json"), "--threads", "1", *extra])


def test_eval_clip_evaluates_weights_of_pretrain_clip(eval_clip, corpus, weights, tmp_path, capsys):
    assert _eval(eval_clip, corpus[0], weights, tmp_path) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["rows"]) == {"trained", "random_init"} and result["weights"] == str(weights)
    assert result["rows"]["trained"]["images"] >= 6 and result["shared_names_tango_gnome"] >= 3
    assert "kNN tango->gnome top-1" in capsys.readouterr().out


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "truncate"), ("model.pt", "truncate"), ("model.pt", "garbage"), ("model.bin", "empty"),
])
def test_eval_clip_damaged_weights_file_is_one_line_naming_it(eval_clip, corpus, tmp_path, one_line_error,
                                                             name, damage):
    path = _weights(tmp_path / name)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not weights\n" * 50, "empty": b""}[damage])
    assert _eval(eval_clip, corpus[0], path, tmp_path) == 2
    line = one_line_error("eval_clip")
    assert f"{path} is damaged" in line and "scripts/pretrain_clip.py" in line
    assert "weights_only" not in line
    assert not (tmp_path / "result.json").exists()


def test_eval_clip_refuses_pickled_code_weights_without_running_them(eval_clip, corpus, tmp_path, one_line_error,
                                                                   pickled_code_file):
    marker = tmp_path / "the-payload-ran"
    path = pickled_code_file(tmp_path / "model.pt", marker)
    assert _eval(eval_clip, corpus[0], path, tmp_path) == 2
    line = one_line_error("eval_clip")
    assert f"{path} holds pickled Python code" in line and "not plain weights" in line
    assert "weights_only" not in line and "trust" not in line  # not torch's advice to unpickle it anyway
    assert not marker.exists()


def test_eval_clip_refuses_weights_of_another_model(eval_clip, corpus, tmp_path, one_line_error):
    cnn = _weights(tmp_path / "cnn.safetensors", model="tpsnet-cnn-clip")
    assert _eval(eval_clip, corpus[0], cnn, tmp_path) == 2
    assert f"{cnn} holds the weights of 'tpsnet-cnn-clip' (its metadata), not of --model tpsnet-tiny-clip: " \
           "pass --model tpsnet-cnn-clip" in one_line_error("eval_clip")
    for plain in (_weights(tmp_path / "cnn.pt", model="tpsnet-cnn-clip"),
                  _weights(tmp_path / "plain.safetensors", model="tpsnet-cnn-clip", metadata=False)):
        assert _eval(eval_clip, corpus[0], plain, tmp_path) == 2
        line = one_line_error("eval_clip")
        assert f"{plain} does not hold weights of --model tpsnet-tiny-clip" in line
        assert "pass the --model they were trained with" in line
    assert not (tmp_path / "result.json").exists()


def test_eval_clip_refuses_weights_trained_on_a_held_out_theme(eval_clip, corpus, tmp_path, one_line_error):
    seen = _weights(tmp_path / "seen.safetensors", train_themes=("alpha", "tango"))
    assert _eval(eval_clip, corpus[0], seen, tmp_path) == 2
    line = one_line_error("eval_clip")
    assert f"{seen} was trained on tango, which the icon corpus {corpus[0]} holds out" in line
    # a corpus built with another holdout (here none): nothing to measure the held-out themes on
    fine = _weights(tmp_path / "fine.safetensors")
    assert _eval(eval_clip, corpus[1], fine, tmp_path) == 2
    assert f"the icon corpus {corpus[1]} holds out [], not tango and gnome" in one_line_error("eval_clip")
    assert not (tmp_path / "result.json").exists()


def test_eval_clip_unknown_weights_tag_is_one_line(eval_clip, corpus, tmp_path, one_line_error):
    assert _eval(eval_clip, corpus[0], tmp_path / "missing.safetensors", tmp_path) == 2
    assert "is neither an existing file nor a known open_clip tag" in one_line_error("eval_clip")


def _export(export_clip, weights, tmp_path, model="tpsnet-tiny-clip"):
    return export_clip.main(["--weights", str(weights), "--model", model, "--tag", "test", "--out-dir", str(tmp_path)])


def test_export_damaged_missing_or_pickled_weights_are_one_line(export_clip, weights, tmp_path, one_line_error,
                                                                pickled_code_file):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:5000])
    marker = tmp_path / "the-payload-ran"
    pickled = pickled_code_file(tmp_path / "model.pt", marker)
    for path in (truncated, pickled):
        assert _export(export_clip, path, tmp_path) == 2
        line = one_line_error("export_clip_weights")
        assert f"{path} is damaged, truncated or not a safetensors file" in line and "pretrain_clip.py" in line
        assert "weights_only" not in line
    assert not marker.exists()
    assert _export(export_clip, tmp_path / "missing.safetensors", tmp_path) == 2
    assert f"{tmp_path / 'missing.safetensors'} does not exist" in one_line_error("export_clip_weights")
    assert not list(tmp_path.glob("tpsnet-*"))


def test_export_weights_of_another_model_name_the_model(export_clip, weights, tmp_path, capsys, one_line_error):
    assert _export(export_clip, weights, tmp_path, model="tpsnet-cnn-clip") == 2
    assert "does not hold the weights of open_clip model 'tpsnet-cnn-clip': pass --model tpsnet-tiny-clip" \
        in one_line_error("export_clip_weights")
    assert _export(export_clip, weights, tmp_path) == 0
    assert "sha256 " in capsys.readouterr().out and (tmp_path / "tpsnet-tiny-clip-test.safetensors").is_file()
