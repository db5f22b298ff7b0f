"""Smoke test of the benchmark scripts: each speed benchmark runs with --quick and writes the expected JSON;
the quality study and the diagnostics run on tiny trainer runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"nproc", "cpu_model", "gpu", "torch", "faiss", "date"}
# the shared tiny run (conftest.py) cut to one synergy epoch, for the scripts that diagnose finished runs
DIAGNOSED_RUN = ("synergy.epochs=1",)
EXPECTED_KEYS = {
    "bench_eval": {"setup", "headers", "rows", "results", "goals_at_first_size", "notes"},
    "bench_cluster": {"setup", "clustering", "instance_loss"},
    "bench_step": {"setup", "headers", "rows", "results", "parts_s", "profiles",
                   "goal_vit_overhead_le_15pct"},
    "bench_stage1": {"setup", "headers", "rows", "results"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_quick_run_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    # one thread each: on a loaded 2-core machine 2-thread OpenMP barriers can stall tiny ops
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.speed.{name}", "--quick", "--threads", "1",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert MACHINE_KEYS <= set(result["machine"])
    assert EXPECTED_KEYS[name] <= set(result)
    if name == "bench_eval":
        cases = result["results"]["1000x1000"]
        for key in ("ours knn=auto|P@k + mAP@All", "ours knn=torch|P@k only"):
            assert cases[key]["max_abs_diff_vs_dense"] <= 0.02
            assert cases[key]["median_s"] > 0 and cases[key]["extra_peak_mib"] >= 0
    elif name == "bench_cluster":
        assert all(entry["values_equal"] for entry in result["instance_loss"]["results"].values())
        assert all(0 <= case["ours"]["nmi"] <= 1 for case in result["clustering"]["results"].values())
    elif name == "bench_step":
        timed = result["results"]["test_vit"]
        assert {"RGB alone", "TPSNet (phase+fusion+synergy)"} <= set(timed)
    else:
        assert any(key.startswith("stage 2") for key in result["results"])
        assert all(row[4] > 0 for row in result["rows"])  # seconds per epoch


@pytest.mark.slow
def test_quality_digits_runs_variants_in_worker_processes(tmp_path):
    # Tiny runs (60 images per domain, one epoch per stage), two at once through --jobs.
    tiny = ["data.subset_per_domain=60", "warmup.epochs=1",
            "warmup.batch_size=32", "prompts.epochs=1", "synergy.epochs=1", "synergy.batch_size=40",
            "cluster.nredo=1", "eval.map_at_all=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.quality.quality_digits", "--config", "configs/digits.yaml",
               "--seeds", "0", "1", "--variants", "raw_pixels", "no_priors", "full", "--jobs", "2", "--threads", "1",
               "--work-dir", str(tmp_path / "runs"), "--out", str(tmp_path), "--set", *tiny]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "quality_digits.json").read_text())
    # a second invocation reuses the four finished runs instead of training them again
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing the finished run") == 4
    assert json.loads((tmp_path / "quality_digits.json").read_text())["variants"] == report["variants"]
    assert set(report["variants"]) == {"raw_pixels", "no_priors", "full"}
    for variant in ("no_priors", "full"):
        data = report["variants"][variant]
        assert len(data["curves"]) == 2 and len(data["oracle_peak_epochs"]) == 2
        # one clustering per run (after the warm-up; a 1-epoch stage 2 does not re-cluster)
        assert [[(r["stage"], r["epoch"]) for r in records] for records in data["clustering"]] == [[("cluster", 0)]] * 2
        mean, std = data["last"]["mean"]["precision_at_1"]
        assert 0 <= mean <= 100 and std >= 0
    # each run's own summary agrees with the aggregate (mean over the two seeds)
    p1 = [json.loads((tmp_path / "runs" / f"full-seed{seed}" / "summary.json").read_text())["last"]
          for seed in (0, 1)]
    direction = "handwritten-mnist->printed"
    expected = sum(run[direction]["precision_at_1"] for run in p1) / 2
    assert report["variants"]["full"]["last"][direction]["precision_at_1"][0] == pytest.approx(expected)
    assert (tmp_path / "quality_digits_ablation.png").stat().st_size > 0
    assert (tmp_path / "quality_digits_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_confusions_digits_matches_the_runs_evaluation(tmp_path, tiny_config):
    from tpsnet_plugin.training import TPSNetTrainer

    summary = TPSNetTrainer(tiny_config(tmp_path, *DIAGNOSED_RUN)).fit()
    out = tmp_path / "confusions.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.confusions_digits", "--run",
                           str(tmp_path / "run"), "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["directions"]) == set(summary["last"])
    for direction, row in report["directions"].items():
        # the evaluator's P@1 of the reloaded checkpoint, the run's own last P@1, and 1 - errors/queries agree
        assert row["precision_at_1"] == pytest.approx(summary["last"][direction]["precision_at_1"], abs=1e-6)
        assert row["precision_at_1"] == pytest.approx(100 * (1 - row["errors"] / row["queries"]), abs=1e-6)
        assert sum(c["count"] for c in row["top_confusions"]) <= row["errors"]
        assert all(c["query_class"] != c["retrieved_class"] for c in row["top_confusions"])
    missing = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.confusions_digits", "--run",
                              str(tmp_path / "nowhere")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "must be the output_dir of a trainer run" in missing.stderr


@pytest.mark.slow
def test_domainnet_scale_quick_runs_the_whole_pipeline(tmp_path):
    # DomainNet's shape at 1/1000 scale: 6 domains, images decoded from disk (no in-memory cache)
    out, data = tmp_path / "bench_domainnet_scale.json", tmp_path / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.speed.bench_domainnet_scale", "--quick",
               "--threads", "1", "--data-dir", str(data), "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    report = result["report"]
    sizes = {"clipart": 48, "infograph": 51, "painting": 72, "quickdraw": 172, "real": 172, "sketch": 69}
    assert report["dataset"]["domains"] == sizes and report["dataset"]["images"] == sum(sizes.values())
    assert report["synthetic_data"]["reused"] is False
    assert len(list(data.rglob("*.jpg"))) == sum(sizes.values())
    assert report["embedding"]["images_per_s"] > 0 and report["clustering"]["seconds"] > 0
    stage2 = report["stage2"]
    assert stage2["steps"] == 4 and 0 <= stage2["data_wait_fraction"] <= 1 and stage2["images_per_s"] > 0
    evaluation = report["evaluation"]
    assert evaluation["directions"] == 30 and len(evaluation["metrics"]) == 30
    for metrics in evaluation["metrics"].values():
        assert set(metrics) == {"precision_at_50", "precision_at_100", "precision_at_200", "map_at_all"}
        assert all(0 <= value <= 100 for value in metrics.values())
    assert report["phase_branch_compiled"] is False  # auto: eager on the CPU


def test_frozen_clip_baseline_matches_a_brute_force_ranking_of_the_clip_features(tmp_path, monkeypatch):
    import importlib.util

    import torch
    import torch.nn.functional as F

    from scripts.icons_clip import encode_captions
    from tpsnet_plugin.training import TPSNetTrainer, load_config
    from tpsnet_plugin.training.data import images_as_float

    module = importlib.import_module("benchmarks.quality.quality_digits")
    tiny = ["data.subset_per_domain=60", "model.clip_pretrained=null"]  # the baseline must use icons anyway
    results, zero_shot = module.frozen_clip_baseline(str(ROOT / "configs" / "digits.yaml"), tiny, tmp_path)

    trainer = TPSNetTrainer(load_config(ROOT / "configs" / "digits.yaml", [*tiny, "model.clip_pretrained=icons"],
                                        output_dir=str(tmp_path / "reference")))
    images = torch.stack([images_as_float(trainer.data.dataset[i][0]) for i in range(len(trainer.data.dataset))])
    features = F.normalize(trainer.networks.prompt_learner.encode_images(images), dim=-1)
    labels, domains = torch.as_tensor(trainer.data.true_labels), trainer.data.domains
    query, gallery = domains == 0, domains == 1
    centred = features.clone()  # evaluated like the model: centred per domain (the config's eval.center_per_domain)
    for mask in (query, gallery):
        centred[mask] -= centred[mask].mean(0)
    nearest = (centred[query] @ centred[gallery].T).argmax(1)
    expected = 100 * (labels[gallery][nearest] == labels[query]).double().mean().item()
    assert results["handwritten-mnist->printed"]["precision_at_1"] == pytest.approx(expected)

    words = [module.NUMBER_WORDS[i] for i in range(10)]
    from open_clip import get_tokenizer

    text = encode_captions(trainer.networks.prompt_learner.clip, get_tokenizer("tpsnet-tiny-clip"), words)
    named = (features @ text.T).argmax(1)
    assert zero_shot["image_to_name_top1"] == pytest.approx((named == labels).double().mean().item())
    assert zero_shot["images"] == len(features) == 120 and zero_shot["image_to_name_chance_top1"] == 0.1


@pytest.mark.slow
def test_embedding_parts_matches_the_run_and_a_direct_computation(tmp_path, tiny_overrides):
    import torch
    import torch.nn.functional as F

    from tpsnet_plugin.evaluation import evaluate_domains
    from tpsnet_plugin.retrieve import load_trained_model
    from tpsnet_plugin.training import TPSNetTrainer, load_config
    from tpsnet_plugin.training.data import images_as_float

    run = tmp_path / "full-seed0"
    trainer = TPSNetTrainer(load_config(ROOT / "configs" / "digits.yaml", [*tiny_overrides, *DIAGNOSED_RUN],
                                        output_dir=str(run)))
    summary = trainer.fit()
    out = tmp_path / "parts.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.embedding_parts", "--runs", str(run),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = report["runs"][str(run)]
    assert set(parts) == {"embedding", "fused", "rgb", "phase"} and set(report["mean_precision_at_1"]) == {"full"}
    for direction, metrics in summary["last"].items():  # the reloaded embedding is the run's result
        assert parts["embedding"][direction]["precision_at_1"] == pytest.approx(metrics["precision_at_1"], abs=1e-6)
    # every part against the exported model's own outputs, normalised, centred per domain, ranked
    model, _ = load_trained_model(run)
    images = images_as_float(trainer.data.images)  # what the trainer embeds: the uint8 image cache
    domains = torch.as_tensor(trainer.data.dataset.domains)
    with torch.no_grad():
        outputs = model(images, domains, return_dict=True)
    for part in ("fused", "rgb", "phase"):
        features = F.normalize(outputs[part].float(), dim=-1)
        for d in range(2):
            features[domains == d] -= features[domains == d].mean(0)
        expected = evaluate_domains(F.normalize(features, dim=-1), torch.as_tensor(trainer.data.true_labels), domains,
                                    trainer.data.domain_names, ks=(1, 5, 15))
        for direction, metrics in expected.items():
            assert parts[part][direction]["precision_at_1"] == pytest.approx(metrics["precision_at_1"], abs=1e-6), part
