"""Every run's starting point, the warning when training does not beat it, and label-free selection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tpsnet_plugin.evaluation import evaluate_domains, mean_metrics
from tpsnet_plugin.training import TPSNetTrainer
from tpsnet_plugin.training.reporting import build_summary

from ..references import centred_per_domain


def test_raw_pixel_baseline_matches_a_direct_computation(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))
    baseline = trainer.evaluator.baseline()
    pixels = trainer.data.images.float().div(255).mean(1).flatten(1)  # grayscale, 16x16 (no resize below 32 px)
    expected = evaluate_domains(centred_per_domain(pixels, trainer.data.domains), trainer.data.true_labels,
                                trainer.data.domains.numpy(), domain_names=trainer.data.domain_names, ks=(1, 5, 15))
    uncentred = evaluate_domains(F.normalize(pixels, dim=-1), trainer.data.true_labels, trainer.data.domains.numpy(),
                                 domain_names=trainer.data.domain_names, ks=(1, 5, 15))
    assert expected != uncentred  # the data tells the two apart
    assert baseline["kind"] == "raw_pixels"
    for direction, metrics in expected.items():
        for name, value in metrics.items():
            assert baseline["results"][direction][name] == pytest.approx(value, abs=1e-6)


def test_pretrained_baseline_is_the_frozen_backbone(tmp_path, tiny_config):
    import timm

    weights = tmp_path / "rgb.pth"
    torch.manual_seed(3)
    torch.save(timm.create_model("small_cnn", num_classes=0, widths=[8, 16, 16, 32]).state_dict(), weights)
    trainer = TPSNetTrainer(tiny_config(tmp_path, f"model.checkpoint_path={weights}"))
    assert trainer.evaluator.starting_point_kinds()[:2] == ["raw_pixels", "frozen_features"]
    baseline = trainer.evaluator.baseline("frozen_features")
    network = timm.create_model("small_cnn", num_classes=0, widths=[8, 16, 16, 32], checkpoint_path=str(weights)).eval()
    backbone = trainer.model.backbone
    with torch.no_grad():
        images = trainer.data.images.float().div(255)
        features = network((images - backbone.rgb_mean) / backbone.rgb_std)
    expected = evaluate_domains(centred_per_domain(features, trainer.data.domains), trainer.data.true_labels,
                                trainer.data.domains.numpy(), domain_names=trainer.data.domain_names, ks=(1, 5, 15))
    assert baseline["kind"] == "frozen_features"
    for direction, metrics in expected.items():
        assert baseline["results"][direction]["precision_at_1"] == pytest.approx(metrics["precision_at_1"], abs=1e-6)


def test_baseline_draws_no_random_numbers(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))
    before = torch.get_rng_state()
    trainer.records.record_starting_points(trainer.evaluator)
    assert torch.equal(before, torch.get_rng_state())
    kinds = [record["baseline"]["kind"] for record in trainer.state.history]
    # digits.yaml: the icons CLIP
    assert kinds == trainer.evaluator.starting_point_kinds() == ["raw_pixels", "clip_zero_shot"]


@pytest.mark.slow
def test_a_run_below_its_baseline_says_so(tmp_path, capsys, tiny_config):
    # Three tiny epochs on 16 px images do not reach raw pixels: the run must say it.
    summary = TPSNetTrainer(tiny_config(tmp_path)).fit()
    last = mean_metrics(summary["last"])["precision_at_1"]
    start = summary["baseline"]["mean"]["precision_at_1"]
    assert (last <= start) == bool(summary["warnings"])
    if summary["warnings"]:
        assert "does not beat its starting point (raw pixels)" in summary["warnings"][0]
        assert "WARNING: the trained embedding does not beat its starting point" in capsys.readouterr().out


def _history(p1_by_epoch, scores, baseline_p1):
    def results(value):
        return {"a->b": {"precision_at_1": value}, "b->a": {"precision_at_1": value}}

    history = [{"stage": "baseline", "epoch": 0, "baseline": {"kind": "raw_pixels", "results": results(baseline_p1)}}]
    for epoch, (p1, score) in enumerate(zip(p1_by_epoch, scores), start=1):
        history.append({"stage": "synergy", "epoch": epoch, "pseudo_label_nmi": None, "label_free_score": score,
                        "results": results(p1)})
    return history


def test_summary_selects_epochs_and_warns_only_when_not_above_the_baseline():
    summary = build_summary(_history([50, 70, 60], [10, 30, 40], 55), first_k=1, domain_names=["a", "b"])
    assert summary["last_epoch"] == 3 and summary["oracle_best"]["epoch"] == 2
    assert summary["label_free_best"]["epoch"] == 3 and summary["label_free_best"]["score"] == 40
    assert summary["warnings"] == []
    flagged = build_summary(_history([50, 70, 55], [1, 2, 3], 55), first_k=1, domain_names=["a", "b"])
    assert len(flagged["warnings"]) == 1 and "55.00 vs 55.00" in flagged["warnings"][0]


def test_label_free_score_is_pseudo_label_precision(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))
    trainer.labelling.cluster(trainer.embedder(synergy=False))
    embeddings = torch.randn(len(trainer.data.dataset), 16, generator=torch.Generator().manual_seed(0))
    features = trainer.evaluator.retrieval_features(embeddings)
    labels, domains = trainer.state.labels.numpy(), trainer.data.domains.numpy()
    shares = []
    for a in (0, 1):
        b = 1 - a
        query, gallery = np.flatnonzero(domains == a), np.flatnonzero(domains == b)
        top1 = gallery[(features[query] @ features[gallery].T).argmax(1).numpy()]
        shares.append(100 * np.mean(labels[query] == labels[top1]))
    score = trainer.evaluator.label_free_score(embeddings, trainer.state.labels)
    assert score == pytest.approx(np.mean(shares), abs=1e-6)
