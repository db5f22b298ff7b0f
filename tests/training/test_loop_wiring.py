"""The trainer's wiring between its parts: each test fails when one connection is cut.

Components are tested against brute-force references elsewhere; these check that the trainer
hands them what the config says (the warm-up's negatives, the keep mask, the sampler's epoch,
per-domain centring).
"""

import pytest
import torch
import torch.nn.functional as F

from tpsnet_plugin.losses import InstanceContrastiveLoss
from tpsnet_plugin.training import TPSNetTrainer

NO_TEXT = ("model.text_prior=false", "eval.plots=false", "accelerate.log_with=none")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("within_domain", [True, False])
def test_the_warm_up_loss_follows_warmup_within_domain(tmp_path, within_domain, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, *NO_TEXT, f"warmup.within_domain={within_domain}"))
    warmup = trainer.stages[0]
    seen = {}
    compute = warmup.loss_fn.forward

    def record(embeddings, labels, **kwargs):
        seen.update(embeddings=embeddings.detach(), labels=labels, ref=kwargs["ref_emb"].detach(),
                    loss=compute(embeddings, labels, **kwargs).detach())
        raise _Stop

    warmup.loss_fn.forward = record
    with pytest.raises(_Stop):
        warmup.run(trainer.stage_context)
    assert len(set(seen["labels"].tolist())) == 2  # both domains in the batch: the flag matters
    expected, other = (
        InstanceContrastiveLoss(temperature=trainer.config["warmup"]["temperature"], within_domain=flag)(
            seen["embeddings"], seen["labels"], ref_emb=seen["ref"])
        for flag in (within_domain, not within_domain)
    )
    assert torch.allclose(seen["loss"], expected)
    assert not torch.allclose(seen["loss"], other)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, tiny_config):
    """A tiny trainer after clustering, keep_ratio 0.5."""
    trainer = TPSNetTrainer(tiny_config(tmp_path_factory.mktemp("wiring"), *NO_TEXT, "cluster.keep_ratio=0.5",
                                        "warmup.epochs=0"))
    trainer.labelling.cluster(trainer.embedder(synergy=False))
    trainer.state.stage = "synergy"
    return trainer


def test_keep_ratio_masks_the_prototype_loss(clustered):
    trainer, stage = clustered, clustered.stages[-1]
    keep = trainer.state.keep_mask
    assert 0.4 < keep.float().mean() < 0.7  # about half of each (domain, cluster) group
    context = trainer.stage_context
    loader = context.batches.sampled_loader(stage.sampler(context))
    images, domains, index = next(iter(loader))
    received = {}
    prototype = trainer.setup.losses.loss_funcs["prototype"]
    original = prototype.forward

    def record(embeddings, labels, *args, **kwargs):
        received["labels"] = labels
        return original(embeddings, labels, *args, **kwargs)

    prototype.forward = record
    try:
        stage.compute_losses(context, images, domains, index)
    finally:
        prototype.forward = original
    kept = keep[index]
    assert 0 < kept.sum() < len(index)
    # two views of each kept image, with its pseudo-label
    assert received["labels"].tolist() == trainer.state.labels[index][kept].repeat(2).tolist()


def test_consecutive_synergy_epochs_draw_different_batches(clustered, monkeypatch):
    trainer, stage = clustered, clustered.stages[-1]
    batches = []

    def record(context, images, domains, index):
        batches.append(index.tolist())
        return {"prototype": sum(p.sum() for p in context.model.parameters()) * 0.0}

    monkeypatch.setattr(stage, "compute_losses", record)
    sampler = stage.sampler(trainer.stage_context)
    epochs = []
    for epoch in (0, 1):
        trainer.state.epoch = epoch
        batches.clear()
        stage.train_epoch(trainer.stage_context, sampler)
        epochs.append([list(b) for b in batches])
    trainer.state.epoch = 0
    assert epochs[0] != epochs[1]


def test_evaluation_centres_each_domain_by_its_own_mean(clustered):
    trainer = clustered
    assert trainer.config["eval"]["center_per_domain"]
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(len(trainer.data.domains), 8, generator=generator)
    embeddings[trainer.data.domains == 0] += 5.0  # domains far apart: a global mean would leave the offsets
    expected = embeddings.clone()
    for d in trainer.data.domains.unique():
        rows = trainer.data.domains == d
        expected[rows] -= embeddings[rows].mean(0)
    expected = F.normalize(expected, dim=-1)
    assert torch.allclose(trainer.evaluator.retrieval_features(embeddings), expected, atol=1e-6)
