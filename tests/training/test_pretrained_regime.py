"""The pretrained regime: the RGB backbone from the CLIP image tower, no warm-up, three starting points."""

import json

import pytest
import torch
from safetensors.torch import save_file

import tpsnet_plugin  # noqa: F401

# isort: split
import open_clip

from tpsnet_plugin.evaluation import evaluate_domains
from tpsnet_plugin.text_prior import CNN_CLIP_MODEL, TINY_CLIP_MODEL
from tpsnet_plugin.text_prior.domain_prompt_learner import encode_clip_images
from tpsnet_plugin.text_prior.zero_shot import zero_shot_probabilities
from tpsnet_plugin.training import TPSNetTrainer, load_config
from tpsnet_plugin.training.config import ConfigError
from tpsnet_plugin.training.data import images_as_float

from ..references import centred_per_domain


@pytest.fixture(scope="module")
def pretrained(tiny_overrides):
    """The tiny run's overrides in the pretrained regime: 32 px, no warm-up, the RGB backbone from the CLIP."""
    return [item for item in tiny_overrides
            if not item.startswith(("model.rgb_kwargs", "warmup", "data.image_size"))] + [
        "data.image_size=32", "warmup.epochs=0", "model.rgb_from_clip=true", f"model.clip_model={CNN_CLIP_MODEL}",
        "synergy.epochs=2", "eval.zero_shot=true",
    ]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """Random tpsnet-cnn-clip weights in a file, loaded through model.clip_pretrained=<file>."""
    torch.manual_seed(5)
    clip = open_clip.create_model(CNN_CLIP_MODEL)
    path = tmp_path_factory.mktemp("clip") / "cnn_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def pretrained_config(repo, pretrained):
    """``pretrained_config(tmp_path, clip_file, *extra)``: the pretrained tiny run's config with that CLIP file."""

    def make(tmp_path, clip_file, *extra):
        return load_config(repo / "configs" / "digits.yaml",
                           [*pretrained, f"model.clip_pretrained={clip_file}", *extra],
                           output_dir=str(tmp_path / "run"))

    return make


@pytest.mark.slow
def test_run_starts_from_the_clip_and_reports_three_starting_points(tmp_path, clip_file, pretrained_config):
    trainer = TPSNetTrainer(pretrained_config(tmp_path, clip_file))
    clip = trainer.networks.clip
    images = images_as_float(trainer.data.images)
    with torch.no_grad():
        start = trainer.model.eval().backbone.rgb_branch(images)  # eval: BatchNorm's running statistics
        clip_embedding = encode_clip_images(clip, images)
    trainer.model.train()
    torch.testing.assert_close(start, clip_embedding, atol=1e-4, rtol=1e-4)  # I_rgb starts as the CLIP's embedding
    assert trainer.evaluator.starting_point_kinds() == ["raw_pixels", "frozen_features", "clip_zero_shot"]

    summary = trainer.fit()
    points = summary["starting_points"]
    assert summary["baseline"]["kind"] == "frozen_features"
    assert points["clip_zero_shot"]["uses_class_names"] and "uses_class_names" not in points["frozen_features"]
    # zero-shot: class probabilities of the CLIP embedding, centred per domain, ranked
    probabilities = zero_shot_probabilities(clip, CNN_CLIP_MODEL, clip_embedding, [str(d) for d in range(10)],
                                            pretrained=str(clip_file))
    domains = trainer.data.domains
    expected = evaluate_domains(centred_per_domain(probabilities, domains), trainer.data.true_labels, domains.numpy(),
                                domain_names=trainer.data.domain_names, ks=(1, 5, 15))
    for direction, metrics in expected.items():
        assert points["clip_zero_shot"]["results"][direction]["map_at_all"] == pytest.approx(metrics["map_at_all"])
    accuracy = 100 * (probabilities.argmax(1).numpy() == trainer.data.true_labels).mean()
    assert points["clip_zero_shot"]["top1_accuracy"] == pytest.approx(accuracy)

    # stage 1's re-pairings are logged with their precision, the total in the summary
    lines = [json.loads(line) for line in (tmp_path / "run" / "clustering.jsonl").read_text().splitlines()]
    repairs = [line for line in lines if "repair" in line]
    assert [r["repair"] for r in repairs] == ["step", "step", "total"]
    assert summary["prompt_repair"] == {k: v for k, v in repairs[-1].items() if k not in ("stage", "epoch")}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {m["baseline"] for m in metrics if m["stage"] == "baseline"} == set(points)

    # the exported model, rebuilt without the CLIP file, embeds as the trained one (CLIP normalisation kept)
    from tpsnet_plugin.retrieve import load_trained_model

    model, _ = load_trained_model(tmp_path / "run")
    with torch.no_grad():
        rebuilt = model.eval()(images, domains)
    torch.testing.assert_close(rebuilt, trainer.epoch_embeddings(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_repaired_labels_are_what_the_synergy_stage_trains_on(tmp_path, clip_file, monkeypatch, pretrained_config):
    from tpsnet_plugin.training import stages

    seen = {}
    original = stages.relabel_with_prompts

    def every_label_moves(clip_features, text, domains, labels, scale, threshold):
        seen["repaired"] = (original(clip_features, text, domains, labels, scale, threshold) + 1) % 10
        return seen["repaired"]

    monkeypatch.setattr(stages, "relabel_with_prompts", every_label_moves)
    trainer = TPSNetTrainer(pretrained_config(tmp_path, clip_file, "prompts.repair_every=2",
                                              "cluster.recluster_every=0", "synergy.epochs=1"))
    trainer.fit()
    assert torch.equal(trainer.state.labels, seen["repaired"].cpu())
    total = [r["repair"] for r in trainer.state.history if "repair" in r][-1]
    assert total["changed"] == len(trainer.data.dataset)


def test_bad_pretrained_settings_are_clear_errors(tmp_path, clip_file, pretrained_config):
    tiny = open_clip.create_model(TINY_CLIP_MODEL)
    other = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(other))
    with pytest.raises(ValueError, match="do not fit open_clip model 'tpsnet-cnn-clip'.*model.clip_model"):
        TPSNetTrainer(pretrained_config(tmp_path, other))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(clip_file.read_bytes()[:50000])
    with pytest.raises(ValueError, match="damaged.safetensors' cannot be read.*model.clip_pretrained"):
        TPSNetTrainer(pretrained_config(tmp_path, damaged))
    with pytest.raises(ValueError, match="neither an existing file nor a known open_clip tag"):
        TPSNetTrainer(pretrained_config(tmp_path, "no_such_tag"))
    with pytest.raises(ConfigError, match="rgb_from_clip.*unset 'model.pretrained' and 'model.checkpoint_path'"):
        pretrained_config(tmp_path, clip_file, f"model.checkpoint_path={clip_file}")
    with pytest.raises(ValueError, match="model.rgb_backbone=small_cnn"):
        TPSNetTrainer(pretrained_config(tmp_path, clip_file, "model.rgb_backbone=resnet18"))
    with pytest.raises(ValueError, match="data.class_names gives 3 names for 10 classes"):
        TPSNetTrainer(pretrained_config(tmp_path, clip_file, "data.class_names=[a, b, c]"))


def test_zero_shot_without_class_names_is_refused(tmp_path, clip_file, pretrained, repo):
    root = tmp_path / "data"
    lists = []
    for domain in ("a", "b"):
        lines = []
        for i in range(6):
            path = root / domain / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(path)
            lines.append(f"{domain}/{i}.png {i % 2}")
        (root / f"{domain}.txt").write_text("\n".join(lines) + "\n")
        lists.append(str(root / f"{domain}.txt"))
    config = [*pretrained, f"model.clip_pretrained={clip_file}", "data.dataset=folder", f"data.root={root}",
              "data.layout=list", f"data.list_files=[{', '.join(lists)}]", "data.domains=[a, b]",
              "data.subset_per_domain=null"]
    with pytest.raises(ValueError, match="eval.zero_shot=true needs class names.*data.class_names"):
        TPSNetTrainer(load_config(repo / "configs" / "digits.yaml", config, output_dir=str(tmp_path / "run")))
    named = TPSNetTrainer(load_config(repo / "configs" / "digits.yaml", [*config, "data.class_names=[cat, dog]"],
                                      output_dir=str(tmp_path / "run")))
    assert named.data.class_names == ["cat", "dog"] and "clip_zero_shot" in named.evaluator.starting_point_kinds()
