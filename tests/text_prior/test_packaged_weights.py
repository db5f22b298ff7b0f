"""The CLIP weights shipped in the package (open_clip pretrained tags: icons, digits_disjoint, artwork)."""

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

from scripts.icons_clip import (  # noqa: E402
    encode_captions,
    encode_images,
    load_images,
    zero_shot_accuracy,
)
from tpsnet_plugin.text_prior import DomainPromptLearner, packaged_weights  # noqa: E402
from tpsnet_plugin.text_prior.packaged_weights import PACKAGED_WEIGHTS, PackagedWeightsError  # noqa: E402

PACKAGED = [(model, tag) for model, tags in PACKAGED_WEIGHTS.items() for tag in tags]
MODEL, TAG = "tpsnet-tiny-clip", "icons"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "icons_holdout_sample"


def weights_file(model=MODEL, tag=TAG) -> Path:
    return packaged_weights.WEIGHTS_DIR / PACKAGED_WEIGHTS[model][tag][0]


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A writable copy of the weights folder, used by the registry instead of the packaged one."""
    copy = tmp_path / "weights"
    shutil.copytree(packaged_weights.WEIGHTS_DIR, copy)
    monkeypatch.setattr(packaged_weights, "WEIGHTS_DIR", copy)
    return copy


@pytest.mark.parametrize("model,tag", PACKAGED)
def test_registered_and_listed(model, tag):
    assert tag in open_clip.list_pretrained_tags_by_model(model)
    path = weights_file(model, tag)
    assert path.is_file() and path.suffix == ".safetensors"
    assert path.stat().st_size <= 20 * 2**20


@pytest.mark.parametrize("model,tag", PACKAGED)
def test_sha256_matches_registered_value(model, tag):
    digest = hashlib.sha256(weights_file(model, tag).read_bytes()).hexdigest()
    assert digest == PACKAGED_WEIGHTS[model][tag][1]


@pytest.mark.parametrize("model,tag", PACKAGED)
def test_weights_are_fp16_and_match_the_architecture(model, tag):
    state = load_file(str(weights_file(model, tag)))
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    assert all(key.endswith("num_batches_tracked") for key, t in state.items() if not t.is_floating_point())
    assert set(state) == set(open_clip.create_model(model).state_dict())


@pytest.mark.parametrize("name,tag", PACKAGED)
def test_both_load_paths_give_identical_weights(name, tag):
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=tag)
    learner = DomainPromptLearner(name, pretrained=tag, num_domains=1, num_clusters=1)
    stored = load_file(str(weights_file(name, tag)))
    a, b = model.state_dict(), learner.clip.state_dict()
    assert set(a) == set(b) == set(stored)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], stored[key].to(a[key].dtype)), key
    random_model = open_clip.create_model(name)
    assert not torch.equal(random_model.state_dict()["token_embedding.weight"], a["token_embedding.weight"])


def test_corrupt_file_is_a_clear_error(weights_dir):
    path = weights_dir / PACKAGED_WEIGHTS[MODEL][TAG][0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="damaged.*reinstall"):
        open_clip.create_model_and_transforms(MODEL, pretrained="icons")
    with pytest.raises(PackagedWeightsError, match="damaged.*reinstall"):
        DomainPromptLearner(MODEL, pretrained="icons")


def test_missing_file_is_a_clear_error(weights_dir):
    (weights_dir / PACKAGED_WEIGHTS[MODEL][TAG][0]).unlink()
    with pytest.raises(RuntimeError, match="missing.*reinstall"):
        open_clip.create_model_and_transforms(MODEL, pretrained="icons")
    with pytest.raises(PackagedWeightsError, match="missing.*reinstall"):
        DomainPromptLearner(MODEL, pretrained="icons")


def test_wrong_model_for_the_tag_is_an_error():
    with pytest.raises(PackagedWeightsError, match="exists only for"):
        DomainPromptLearner("RN50", pretrained="icons")
    with pytest.raises(RuntimeError, match="icons"):  # open_clip's own error, never a random model
        open_clip.create_model_and_transforms("RN50", pretrained="icons")


def load_sample():
    with open(SAMPLE / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = load_images([SAMPLE / row["file"] for row in rows], size=64)
    return images, [row["caption"] for row in rows]


def zero_shot(model, images, captions, name=MODEL):
    candidates = sorted(set(captions))
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        return zero_shot_accuracy(encode_images(model.eval(), images), captions,
                                  encode_captions(model, tokenizer, candidates), candidates)


@pytest.mark.slow
@pytest.mark.parametrize("name,tag", PACKAGED)
def test_zero_shot_on_held_out_icons_far_above_random_init(name, tag):
    # every packaged CLIP saw the icon corpus's training themes, none the held-out tango theme
    images, captions = load_sample()
    assert len(captions) <= 300 and images.shape[1:] == (3, 64, 64)
    torch.manual_seed(0)
    trained = zero_shot(open_clip.create_model(name, pretrained=tag), images, captions, name)
    random_scores = []  # random init hits 0-2 of 210 images: compare with the mean over seeds
    for seed in range(5):
        torch.manual_seed(seed)
        random_scores.append(zero_shot(open_clip.create_model(name), images, captions, name)["image_to_name_top1"])
    chance = trained["image_to_name_chance_top1"]
    top1 = trained["image_to_name_top1"]
    random_top1 = sum(random_scores) / len(random_scores)
    assert top1 >= 5 * max(random_top1, chance), (top1, random_scores, chance)
    assert trained["image_to_name_top5"] >= 5 * trained["image_to_name_chance_top5"]
