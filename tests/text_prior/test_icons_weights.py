"""The packaged icon-corpus CLIP weights (open_clip pretrained tag "icons")."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a download attempt must fail fast, not hang

import csv  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import tpsnet_plugin  # noqa: E402,F401

# isort: split
import open_clip  # noqa: E402

from tpsnet_plugin.text_prior import (  # noqa: E402
    TINY_CLIP_MODEL,
    DomainPromptLearner,
    pretrained_icons,  # noqa: E402
)
from tpsnet_plugin.text_prior.icons_clip import (  # noqa: E402
    encode_captions,
    encode_images,
    load_images,
    zero_shot_accuracy,
)
from tpsnet_plugin.text_prior.pretrained_icons import ICONS_WEIGHTS, IconsWeightsError  # noqa: E402

MODEL = TINY_CLIP_MODEL
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "icons_holdout_sample"


def weights_file() -> Path:
    return pretrained_icons.WEIGHTS_DIR / ICONS_WEIGHTS[MODEL][0]


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A writable copy of the weights folder, used by the registry instead of the packaged one."""
    copy = tmp_path / "weights"
    shutil.copytree(pretrained_icons.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained_icons, "WEIGHTS_DIR", copy)
    return copy


def test_registered_and_listed():
    assert "icons" in open_clip.list_pretrained_tags_by_model(MODEL)
    path = weights_file()
    assert path.is_file() and path.suffix == ".safetensors"
    assert path.stat().st_size <= 20 * 2**20


def test_sha256_matches_registered_value():
    digest = hashlib.sha256(weights_file().read_bytes()).hexdigest()
    assert digest == ICONS_WEIGHTS[MODEL][1]


def test_weights_are_fp16_and_match_the_architecture():
    state = load_file(str(weights_file()))
    assert all(t.dtype == torch.float16 for t in state.values())
    model = open_clip.create_model(MODEL)
    assert set(state) == set(model.state_dict())


def test_both_load_paths_give_identical_weights():
    model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained="icons")
    learner = DomainPromptLearner(MODEL, pretrained="icons", num_domains=1, num_clusters=1)
    stored = load_file(str(weights_file()))
    a, b = model.state_dict(), learner.clip.state_dict()
    assert set(a) == set(b) == set(stored)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], stored[key].to(a[key].dtype)), key
    random_model = open_clip.create_model(MODEL)
    assert not torch.equal(random_model.state_dict()["token_embedding.weight"], a["token_embedding.weight"])


def test_corrupt_file_is_a_clear_error(weights_dir):
    path = weights_dir / ICONS_WEIGHTS[MODEL][0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="damaged.*reinstall"):
        open_clip.create_model_and_transforms(MODEL, pretrained="icons")
    with pytest.raises(IconsWeightsError, match="damaged.*reinstall"):
        DomainPromptLearner(MODEL, pretrained="icons")


def test_missing_file_is_a_clear_error(weights_dir):
    (weights_dir / ICONS_WEIGHTS[MODEL][0]).unlink()
    with pytest.raises(RuntimeError, match="missing.*reinstall"):
        open_clip.create_model_and_transforms(MODEL, pretrained="icons")
    with pytest.raises(IconsWeightsError, match="missing.*reinstall"):
        DomainPromptLearner(MODEL, pretrained="icons")


def test_wrong_model_for_the_tag_is_an_error():
    with pytest.raises(IconsWeightsError, match="exists only for"):
        DomainPromptLearner("RN50", pretrained="icons")
    with pytest.raises(RuntimeError, match="icons"):  # open_clip's own error, never a random model
        open_clip.create_model_and_transforms("RN50", pretrained="icons")


def load_sample():
    with open(SAMPLE / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = load_images([SAMPLE / row["file"] for row in rows], size=64)
    return images, [row["caption"] for row in rows]


def zero_shot(model, images, captions):
    candidates = sorted(set(captions))
    tokenizer = open_clip.get_tokenizer(MODEL)
    with torch.no_grad():
        return zero_shot_accuracy(encode_images(model.eval(), images), captions,
                                  encode_captions(model, tokenizer, candidates), candidates)


def test_zero_shot_on_held_out_icons_far_above_random_init():
    images, captions = load_sample()
    assert len(captions) <= 300 and images.shape[1:] == (3, 64, 64)
    torch.manual_seed(0)
    trained = zero_shot(open_clip.create_model(MODEL, pretrained="icons"), images, captions)
    random_scores = []  # random init hits 0-2 of 210 images: compare with the mean over seeds
    for seed in range(5):
        torch.manual_seed(seed)
        random_scores.append(zero_shot(open_clip.create_model(MODEL), images, captions)["image_to_name_top1"])
    chance = trained["image_to_name_chance_top1"]
    top1 = trained["image_to_name_top1"]
    random_top1 = sum(random_scores) / len(random_scores)
    assert top1 >= 5 * max(random_top1, chance), (top1, random_scores, chance)
    assert trained["image_to_name_top5"] >= 5 * trained["image_to_name_chance_top5"]
