"""Tests for scripts/pretrain_clip.py: CLIP pretraining on the icon corpus, resumable."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first)

NAMES = ["folder-open", "mail-send", "weather-clear", "audio-volume-high", "user-home", "edit-copy"]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("pretrain_clip")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, load_script):
    """A built icon corpus: two training themes of six names each (distinct colours)."""
    build_icons = load_script("build_icons")
    root = tmp_path_factory.mktemp("icons")
    themes = {}
    for t, theme in enumerate(("alpha", "beta")):
        for i, name in enumerate(NAMES):
            path = root / "themes" / theme / "48x48" / "apps" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), (40 * i, 100 + 50 * t, 200)).save(path)
        themes[theme] = root / "themes" / theme
    result = build_icons.build_corpus(themes, root / "corpus", size=24, holdout=[])
    build_icons.write_marker(root / "corpus", result, 24, [])
    return root / "corpus"


def _run(script, corpus, out, *extra):
    return script.main(["--cache-dir", str(corpus), "--output-dir", str(out), "--batch-size", "4",
                        "--image-size", "24", "--warmup", "1", "--log-every", "1", "--threads", "1", *extra])


def test_resumed_run_ends_exactly_where_an_uninterrupted_one_does(script, corpus, tmp_path, monkeypatch):
    assert _run(script, corpus, tmp_path / "straight", "--steps", "4", "--save-every", "2") == 0
    # killed right after its checkpoint at step 2, then resumed with the same command + --resume
    save = script.save_checkpoint

    def save_then_die(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(script, corpus, tmp_path / "resumed", "--steps", "4", "--save-every", "2")
    monkeypatch.setattr(script, "save_checkpoint", save)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert _run(script, corpus, tmp_path / "resumed", "--steps", "4", "--save-every", "2", "--resume") == 0
    straight, resumed = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    log = json.loads((tmp_path / "resumed" / "train_log.json").read_text())
    assert [step for step, _ in log["loss_curve"]] == [1, 2, 3, 4]
    assert log["loss_curve"] == json.loads((tmp_path / "straight" / "train_log.json").read_text())["loss_curve"]
    # the training changed the weights: a fresh model differs
    import open_clip

    fresh = open_clip.create_model("tpsnet-tiny-clip").state_dict()
    assert not torch.equal(fresh["text_projection"], straight["text_projection"])


def test_existing_checkpoint_without_resume_is_refused(script, corpus, tmp_path, capsys, one_line_error):
    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 0
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 2
    assert "pass --resume" in one_line_error("pretrain_clip")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_resume_with_another_run_length_is_refused(script, corpus, tmp_path, capsys, one_line_error):
    # the cosine schedule follows the run length: a changed --steps would silently change it
    assert _run(script, corpus, tmp_path / "run", "--steps", "2") == 0
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "run", "--steps", "4", "--resume") == 2
    assert "run length in steps (--steps/--epochs, --batch-size) 2 there, 4 now" in one_line_error("pretrain_clip")
    # a checkpoint written before checkpoints recorded their run: checked once loaded
    (tmp_path / "run" / "checkpoint" / "checkpoint.json").unlink()
    assert _run(script, corpus, tmp_path / "run", "--steps", "4", "--resume") == 2
    assert "belongs to a run of 2 steps, not 4" in one_line_error("pretrain_clip")


def test_digits_disjoint_corpus_holds_no_image_of_the_evaluation_pair(script, corpus):
    from tpsnet_plugin.data.digits import DigitsDomain

    digits = script.Corpus.from_digits(script.DIGITS_DOMAINS, image_size=24)
    assert set(digits.themes) == set(script.DIGITS_DOMAINS) == {"printed", "handwriting-fonts", "handwritten-uci"}
    assert not set(digits.themes) & {"handwritten-mnist", "handwritten-mnist-half", "mnist-m"}
    assert digits.images.shape[1:] == (3, 24, 24) and digits.images.dtype == torch.uint8
    assert not digits.flippable.any()
    first = DigitsDomain("printed", image_size=24)
    assert digits.captions[0] == script.digit_captions(int(first.labels[0]))
    assert set(script.digit_captions(7)) >= {"seven", "7", "the number seven"}
    both = script.load_corpus("digits_disjoint", 24, icons_dir=corpus)
    assert len(both) == len(digits) + 12 and len(set(both.names)) == 6 + 10  # icon names + one name per digit


def test_digits_disjoint_run_and_a_batch_larger_than_the_names(script, corpus, tmp_path, capsys, one_line_error):
    assert _run(script, corpus, tmp_path / "digits", "--steps", "1", "--corpus", "digits_disjoint",
                "--model", "tpsnet-cnn-clip") == 0
    log = json.loads((tmp_path / "digits" / "train_log.json").read_text())
    assert log["corpus"] == "digits_disjoint" and log["images_per_theme"]["printed"] == 4550
    # a batch holds one image per name: 17 > 16 names could never fill (it looped forever before)
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "big", "--steps", "1", "--corpus", "digits_disjoint",
                "--batch-size", "17") == 2
    assert "larger than the 16 distinct names" in one_line_error("pretrain_clip")
    assert not (tmp_path / "big" / "checkpoint").exists()


def test_a_single_caption_draws_no_random_number(script):
    import random

    rng, reference = random.Random(0), random.Random(0)
    assert script.pick_caption(("folder open",), rng) == "folder open"
    assert rng.random() == reference.random()  # icon-only runs draw what they drew before digits existed


def test_tint_and_invert_recolour_views_and_draw_nothing_when_off(script):
    images = torch.stack([torch.full((3, 8, 8), 0, dtype=torch.uint8), torch.full((3, 8, 8), 255, dtype=torch.uint8)])
    images[:, :, 2:6, 2:6] = 255 - images[:, :, 2:6, 2:6]  # a square of the other shade
    flippable = torch.zeros(2, dtype=torch.bool)
    plain, reference = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    script.augment(images, flippable, plain)
    script.augment(images, flippable, reference, tint_p=0.0, invert_p=0.0)
    assert torch.equal(plain.get_state(), reference.get_state())  # runs without them draw what they drew before
    inverted = script.augment(images, flippable, torch.Generator().manual_seed(1), invert_p=1.0)
    upright = script.augment(images, flippable, torch.Generator().manual_seed(1))
    torch.testing.assert_close(inverted, 1 - upright)
    tinted = script.augment(images, flippable, torch.Generator().manual_seed(2), tint_p=1.0)
    # two colours per view (ink and paper), and colour where the input was gray
    assert (tinted[:, 0] - tinted[:, 1]).abs().max() > 0.01
    assert tinted.min() >= 0 and tinted.max() <= 1


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "truncate"), ("optimizer.bin", "truncate"), ("custom_checkpoint_1.pkl", "garbage"),
])
def test_resume_from_a_damaged_checkpoint_file_is_one_line_naming_it(script, corpus, tmp_path, capsys,
                                                                     one_line_error, name, damage):
    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 0
    path = tmp_path / "run" / "checkpoint" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a checkpoint\n" * 20)
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "run", "--steps", "1", "--resume") == 2
    line = one_line_error("pretrain_clip")
    assert f"{path} is damaged" in line and "start a new run in another --output-dir" in line
    assert "weights_only" not in line


def test_resume_refuses_a_pickled_code_checkpoint_file_without_running_it(script, corpus, tmp_path, capsys,
                                                                          one_line_error, pickled_code_file):
    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 0
    marker = tmp_path / "the-payload-ran"
    path = tmp_path / "run" / "checkpoint" / "custom_checkpoint_0.pkl"  # Accelerate unpickles it in full
    pickled_code_file(path, marker)
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "run", "--steps", "1", "--resume") == 2
    line = one_line_error("pretrain_clip")
    assert f"{path} holds pickled Python code" in line and "not plain weights" in line
    assert "weights_only" not in line and "trust" not in line  # not torch's advice to unpickle it anyway
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_of_another_model_or_corpus(script, corpus, tmp_path, capsys, load_script,
                                                                 one_line_error):
    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 0
    capsys.readouterr()
    assert _run(script, corpus, tmp_path / "run", "--steps", "1", "--resume", "--model", "tpsnet-cnn-clip") == 2
    assert "--model 'tpsnet-tiny-clip' there, 'tpsnet-cnn-clip' now" in one_line_error("pretrain_clip")
    # the same themes built with another holdout: other training images, the sampler state means nothing for them
    build_icons = load_script("build_icons")
    themes = {theme: corpus.parent / "themes" / theme for theme in ("alpha", "beta")}
    other = tmp_path / "other-holdout"
    build_icons.write_marker(other, build_icons.build_corpus(themes, other, size=24, holdout=["beta"]), 24, ["beta"])
    assert _run(script, other, tmp_path / "run", "--steps", "1", "--resume") == 2
    line = one_line_error("pretrain_clip")
    assert "corpus (--cache-dir/--artwork-dir) '12 images of 2 themes" in line and "'6 images of 1 themes" in line
    # a checkpoint written before checkpoints recorded their run: the model's state dict does not load
    (tmp_path / "run" / "checkpoint" / "checkpoint.json").unlink()
    assert _run(script, corpus, tmp_path / "run", "--steps", "1", "--resume", "--model", "tpsnet-cnn-clip") == 2
    line = one_line_error("pretrain_clip")
    assert f"cannot resume from {tmp_path / 'run' / 'checkpoint'}" in line and "another --model" in line


def test_final_weights_name_their_model_and_training_themes(script, corpus, tmp_path):
    from safetensors import safe_open

    assert _run(script, corpus, tmp_path / "run", "--steps", "1") == 0
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as weights:
        meta = weights.metadata()
    assert meta["model"] == "tpsnet-tiny-clip" and meta["corpus"] == "icons"
    assert json.loads(meta["train_themes"]) == ["alpha", "beta"]
