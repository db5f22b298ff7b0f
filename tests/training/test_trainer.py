"""End-to-end trainer runs on a tiny Digits subset (seconds each)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tpsnet_plugin.models import TPSNet
from tpsnet_plugin.training import NonFiniteLossError, TPSNetTrainer
from tpsnet_plugin.training.data import images_as_float

# every test here trains (fit(), a CLI subprocess or accelerate launch) or compiles: all end-to-end
pytestmark = pytest.mark.slow


def test_fit_writes_summary_metrics_and_model(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, "eval.plots=true", "eval.tsne_max_points=100"))
    summary = trainer.fit()
    run = tmp_path / "run"
    directions = {"handwritten-mnist->printed", "printed->handwritten-mnist"}
    assert set(summary["last"]) == directions
    for metrics in summary["last"].values():
        assert set(metrics) == {"precision_at_1", "precision_at_5", "precision_at_15", "map_at_all"}
        assert all(0 <= v <= 100 for v in metrics.values())
    assert summary["oracle_best"]["epoch"] in (1, 2, 3) and "oracle" in summary["oracle_best"]["note"]
    assert summary["baseline"]["kind"] == "raw_pixels" and set(summary["baseline"]["results"]) == directions
    assert summary["raw_pixel_baseline"] == summary["baseline"]["results"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the starting points first (digits.yaml's icons CLIP adds its zero-shot retrieval), then the epochs
    assert [(r["stage"], r["epoch"], r["direction"], r.get("baseline")) for r in lines] == [
        ("baseline", 0, d, kind) for kind in ("raw_pixels", "clip_zero_shot") for d in sorted(directions)] + [
        ("synergy", e, d, None) for e in (1, 2, 3) for d in sorted(directions)]
    assert set(summary["starting_points"]) == {"raw_pixels", "clip_zero_shot"}
    # the label-free epoch is chosen by the recorded score, without labels
    scores = {r["epoch"]: r["label_free_score"] for r in lines if r["stage"] == "synergy"}
    assert all(0 <= s <= 100 for s in scores.values())
    assert summary["label_free_best"]["epoch"] == max(scores, key=scores.get)
    assert json.loads((run / "summary.json").read_text())["last"] == summary["last"]
    # one clustering after the warm-up, one re-clustering at stage-2 epoch 2 (recluster_every 2, none at the end)
    records = [json.loads(line) for line in (run / "clustering.jsonl").read_text().splitlines()]
    clusterings = [r for r in records if "repair" not in r]
    # stage 1 re-pairs after each of its 2 epochs (repair_every 1), then logs its total
    assert [(r["stage"], r["epoch"], r["repair"]) for r in records if "repair" in r] == [
        ("prompts", 1, "step"), ("prompts", 2, "step"), ("prompts", 2, "total")]
    assert [(r["stage"], r["epoch"]) for r in clusterings] == [("cluster", 0), ("synergy", 2)]
    assert clusterings == summary["clustering"]
    assert clusterings[0]["ids_changed"] is None and 0 <= clusterings[1]["ids_changed"] <= 2 * 96
    for record in clusterings:
        assert set(record["nmi_per_domain"]) == {"handwritten-mnist", "printed"}
        assert all(0 <= v <= 1 for v in [record["nmi"], *record["nmi_per_domain"].values()])
    assert (run / "config.yaml").is_file() and (run / "model" / "model.safetensors").is_file()
    assert (run / "tsne.png").is_file() and (run / "retrieval_printed_to_handwritten-mnist.png").is_file()
    # the summary's last epoch is the last evaluation recorded, and the exported model is the one evaluated:
    # rebuilt from model/ alone, it embeds every image as the final evaluation did
    assert summary["last"] == {r["direction"]: r["metrics"] for r in lines if (r["stage"], r["epoch"]) == (
        "synergy", 3)}
    exported = TPSNet.from_pretrained(run / "model")
    images = images_as_float(trainer.data.images)  # what the evaluation embedded: the cached uint8 images
    with torch.no_grad():
        embeddings = exported(images, trainer.data.domains)
    assert torch.allclose(embeddings, trainer.epoch_embeddings(), atol=1e-4)


@pytest.mark.parametrize("switch", ["model.text_prior=false", "model.phase_prior=false"])
def test_ablation_switches_run(tmp_path, switch, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, switch, "synergy.epochs=1", "warmup.epochs=0"))
    summary = trainer.fit()
    if switch.startswith("model.text_prior"):
        assert trainer.networks.prompt_learner is None and trainer.model.text_features is None
    else:
        assert trainer.model.backbone.phase_model is None
    assert summary["last"]


def test_nan_loss_stops_with_stage_epoch_term_and_keeps_checkpoint(tmp_path, monkeypatch, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, "warmup.epochs=0"))
    monkeypatch.setattr(trainer.setup.losses.loss_funcs["prototype"], "forward",
                        lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"'prototype'.*stage 'synergy', epoch 0"):
        trainer.fit()
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest == "synergy-start"


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, run_cli):
    # Re-clustering every epoch: the resumed part re-clusters (warm start from the restored clusterer).
    extra = ("synergy.epochs=5", "synergy.checkpoint_every=1", "cluster.recluster_every=1")
    reference = run_cli(tmp_path / "reference", *extra)
    reference_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, reference_out[-3000:]

    killed = run_cli(tmp_path / "killed", *extra, start_new_session=True)
    checkpoint = tmp_path / "killed" / "run" / "checkpoints" / "synergy-epoch002"
    deadline = time.time() + 600
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "run" / "summary.json").exists()

    resumed = run_cli(tmp_path / "killed", *extra, "--resume")
    resumed_out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_out[-3000:]
    assert "resumed from" in resumed_out

    expected_summary = json.loads((tmp_path / "reference" / "run" / "summary.json").read_text())
    actual_summary = json.loads((tmp_path / "killed" / "run" / "summary.json").read_text())
    # The resumed run's records come from the checkpoint's history (none lost, none repeated), and
    # with every state restored (weights, optimizer, RNG, labels, prototypes, clusterer, prompts) the
    # resumed run is the uninterrupted one exactly: every metric and every clustering statistic.
    for name in ("metrics.jsonl", "clustering.jsonl"):
        records = [(tmp_path / run / "run" / name).read_text().splitlines() for run in ("reference", "killed")]
        assert records[0] == records[1], name
    assert actual_summary["last"] == expected_summary["last"]
    assert actual_summary["oracle_best"] == expected_summary["oracle_best"]


def test_two_processes_gather_each_image_once_and_match_one_process_evaluation(tmp_path, run_cli, tiny_config):
    launcher = (str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "2",
                "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no")
    # 2 x 97 images over 2 processes with eval batches of 40: the last batches are padded.
    extra = ("data.subset_per_domain=97", "synergy.epochs=2", "synergy.loss_weights.miner=0.5")
    process = run_cli(tmp_path, *extra, launcher=launcher)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_processes"] == 2

    trainer = TPSNetTrainer(tiny_config(tmp_path, *extra))
    trainer.model.load_state_dict(load_file(str(tmp_path / "run" / "model" / "model.safetensors")))
    trainer.state.stage = "done"
    embeddings = trainer.embedder()
    assert len(embeddings) == 2 * 97
    results = trainer.evaluator.evaluate(embeddings)
    for direction, metrics in summary["last"].items():
        for name, value in metrics.items():
            assert results[direction][name] == pytest.approx(value, abs=1e-3), (direction, name)


def test_compiled_phase_branch_under_accelerate_embeds_like_eager(tmp_path, tiny_config):
    # model.compile forced on the CPU (auto leaves CPU runs eager): the trainer's model, prepared
    # by Accelerate, embeds like the eager one (same seed, same initial weights), and saves the
    # same state_dict keys, so compile can change on --resume.
    torch._dynamo.reset()
    eager = TPSNetTrainer(tiny_config(tmp_path / "eager"))
    compiled = TPSNetTrainer(tiny_config(tmp_path / "compiled", "model.compile=default"))
    assert compiled.model.backbone.phase_branch_compiled and not eager.model.backbone.phase_branch_compiled
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    reference = eager.embedder(synergy=False)
    torch.testing.assert_close(compiled.embedder(synergy=False), reference,
                               atol=1e-4 * float(reference.abs().max()), rtol=0)
    from tpsnet_plugin.training.checkpoint import SAFE_ON_RESUME

    assert "model.compile" in SAFE_ON_RESUME
