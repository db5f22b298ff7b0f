"""The stages of TPSNet training, each an object with one contract: ``run(context)``, where the
context is a :class:`~tpsnet_plugin.training.context.StageContext` (what a stage may use).

A stage continues from ``context.state.epoch`` (0 on a fresh start, later after ``--resume``) and
returns when it is complete; the trainer then advances the state to the next stage and
checkpoints. Stages hold their own options; the context holds what they share (model, optimizer,
batches, pseudo-labels, accelerator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast

from ..errors import ConfigError
from ..losses import InstanceContrastiveLoss, PromptContrastiveLoss
from ..samplers import PseudoLabelSampler
from ..text_prior.domain_prompt_learner import encode_clip_images
from ..text_prior.relabel import relabel_with_prompts
from ..utils import encode_domain_labels
from .context import StageContext
from .hooks import EndOfEpochHook
from .loss_terms import SynergyBatch


def resolve_epochs(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, raised when needed so that the stage makes at least ``min_steps`` optimizer steps."""
    if min_steps <= 0 or steps_per_epoch <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def announce_epochs(context: StageContext, section: str, configured: int, epochs: int, min_steps: int,
                    steps: int) -> None:
    """Say how many epochs a stage runs when ``min_steps`` raised ``epochs`` (a large value is seen at once)."""
    if epochs > configured:
        context.accelerator.print(
            f"{section}: {epochs} epochs instead of {section}.epochs={configured}, to make {section}.min_steps="
            f"{min_steps} optimizer steps at {steps} steps per epoch"
        )


def _require_labels(context: StageContext, stage: str) -> None:
    if context.state.labels is None:
        raise RuntimeError(f"The {stage} stage needs pseudo-labels: run a ClusteringStage before it")


class Stage:
    """Base class of a training stage.

    Attributes:
        name: The stage's name in checkpoints, logs and ``metrics.jsonl``.
        epochs: Number of epochs (0 for stages without epochs).
    """

    name = "stage"
    epochs = 0

    def run(self, context: StageContext) -> None:
        raise NotImplementedError


class WarmupStage(Stage):
    """Instance-contrastive warm-up of the backbone (two augmented views, NT-Xent).

    For backbones without pretrained weights: clusters of random features mean nothing.

    Args:
        epochs: Number of epochs; 0 skips the stage.
        batch_size: Images per batch (per process); the last incomplete batch is dropped.
        lr: Learning rate of every parameter group during the warm-up.
        temperature: NT-Xent temperature.
        within_domain: Take negatives from the anchor's own domain only.
        min_steps: Run more epochs when ``epochs`` gives fewer optimizer steps than this (small
            datasets get as much optimisation as large ones); 0 = exactly ``epochs``.
    """

    name = "warmup"

    def __init__(
        self, epochs: int, batch_size: int, lr: float, temperature: float, within_domain: bool, min_steps: int = 0
    ) -> None:
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.min_steps = int(min_steps)
        self.loss_fn = InstanceContrastiveLoss(temperature=temperature, within_domain=within_domain)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WarmupStage:
        return cls(**config)

    def run(self, context: StageContext) -> None:
        if self.epochs == 0:
            return
        # full batches only (drop_last), split over the processes
        steps = len(context.batches) // self.batch_size // context.accelerator.num_processes
        configured, self.epochs = self.epochs, resolve_epochs(self.epochs, self.min_steps, steps)
        if context.state.epoch >= self.epochs:
            return
        announce_epochs(context, "warmup", configured, self.epochs, self.min_steps, steps)
        context.learning_rates(self.lr)
        acc = context.accelerator
        while context.state.epoch < self.epochs:
            loader = context.batches.shuffled_loader(self.batch_size, epoch=context.state.epoch)
            if len(loader) == 0:
                raise ConfigError(
                    f"warmup.batch_size={self.batch_size} leaves no full batch for {len(context.batches)} images on "
                    f"{acc.num_processes} process(es): lower warmup.batch_size"
                )
            batches = context.progress(loader, f"warm-up epoch {context.state.epoch + 1}/{self.epochs}")
            for step, (images, domains, _) in enumerate(batches):
                with acc.accumulate(context.stage_model):
                    v1, v2 = context.batches.views(images)
                    domains = domains.to(context.device)
                    with acc.autocast():
                        e1 = context.stage_model(v1, domains, synergy=False)["embedding"]
                        e2 = context.stage_model(v2, domains, synergy=False)["embedding"]
                    loss = self.loss_fn(e1.float(), domains, ref_emb=e2.float())
                    context.check_finite({"instance": loss}, step)
                    acc.backward(loss)
                    context.optimizer.step()
                    context.optimizer.zero_grad()
            context.state.epoch += 1
            acc.log({"warmup/instance": loss.item()}, step=context.state.epoch)
        context.learning_rates()


class ClusteringStage(Stage):
    """Embed every image with the backbone's fused feature, cluster per domain, align the ids."""

    name = "cluster"

    def run(self, context: StageContext) -> None:
        context.labelling.cluster(context.embed(synergy=False))


class PromptStage(Stage):
    """The prompts stage: learn the domain prompts with CLIP frozen, re-pairing labels with them.

    CLIP's image features are computed once (the encoder is frozen), so an epoch costs only the
    text transformer. Ends by freezing the prompt features into the model.

    Args:
        epochs: Number of epochs over the images.
        batch_size: Images per batch.
        lr: Adam learning rate of the context vectors.
        repair_every: Epochs between label re-pairings with the prompts; 0 = never.
        repair_threshold: Softmax confidence needed to re-pair a label.
    """

    name = "prompts"

    def __init__(self, epochs: int, batch_size: int, lr: float, repair_every: int, repair_threshold: float) -> None:
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.repair_every, self.repair_threshold = int(repair_every), float(repair_threshold)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PromptStage:
        return cls(**config)

    def run(self, context: StageContext) -> None:
        _require_labels(context, self.name)
        learner, device = context.prompt_learner, context.device
        # computed again, not cached from the zero-shot starting point: each pass over the loader draws from
        # the global RNG stream, so skipping one would change every run's training
        clip_features = context.embed(encoder=partial(encode_clip_images, learner.clip), desc="CLIP features")
        clip_features = F.normalize(clip_features, dim=-1).to(device)
        domains = context.batches.domains.to(device)
        labels = context.state.labels.to(device)
        initial = labels.clone()
        loss_fn = PromptContrastiveLoss(logit_scale=learner.logit_scale)
        optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=self.lr)
        generator = torch.Generator().manual_seed(context.batches.seed)
        for epoch in context.progress(range(self.epochs), "prompts (epochs)"):
            combined = encode_domain_labels(domains, labels, context.batches.num_clusters)
            self.train_epoch(learner, loss_fn, optimizer, clip_features, combined, generator, context.check_finite)
            if self.repair_every and (epoch + 1) % self.repair_every == 0:
                with torch.no_grad():
                    repaired = relabel_with_prompts(
                        clip_features, F.normalize(learner().float(), dim=-1), domains, labels,
                        learner.logit_scale, self.repair_threshold,
                    )
                context.labelling.record_repair(epoch + 1, labels.cpu(), repaired.cpu())
                labels = repaired
        with torch.no_grad():
            text_features = F.normalize(learner().float(), dim=-1)
        # The prompts stage runs identically on every process; rank 0's result is authoritative.
        if self.repair_every and self.epochs >= self.repair_every:
            context.labelling.record_repair(self.epochs, initial.cpu(), labels.cpu(), total=True)
        context.model.set_text_features(broadcast(text_features.contiguous(), from_process=0))
        context.state.labels = broadcast(labels, from_process=0).cpu()

    def train_epoch(
        self, learner, loss_fn, optimizer, clip_features, combined, generator, check_finite=None,
    ) -> list[float]:
        """One epoch of prompt learning over shuffled batches; the loss of each step.

        Args:
            learner: The ``DomainPromptLearner``.
            loss_fn: ``PromptContrastiveLoss`` (images vs all D·C prompts, both directions).
            optimizer: Optimizer of the learner's context vectors.
            clip_features: Frozen, L2-normalised CLIP image features (N×e).
            combined: Combined ``domain * C + cluster`` label per image.
            generator: CPU generator of the shuffling.
            check_finite: Optional ``f(terms, step)`` that raises on a non-finite loss.
        """
        all_prompts = torch.arange(learner.num_domains * learner.num_clusters, device=clip_features.device)
        order = torch.randperm(len(combined), generator=generator).to(clip_features.device)
        losses = []
        for step, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start:start + self.batch_size]
            text = learner().reshape(-1, learner.embed_dim)
            loss = loss_fn(clip_features[batch], combined[batch], ref_emb=text, ref_labels=all_prompts)
            if check_finite is not None:
                check_finite({"prompt_contrastive": loss}, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses


class SynergyStage(Stage):
    """The synergy stage: train TPSNet on the pseudo-labels with the loss table, running hooks after each epoch.

    Batches come from ``PseudoLabelSampler`` (m images per cluster, balanced over domains); each
    batch is seen as two augmented views.

    Args:
        epochs: Number of epochs.
        batch_size: Images per batch (per process).
        m_per_cluster: Images per cluster in a batch.
        hooks: End-of-epoch hooks, run in order after every epoch.
        min_steps: Run more epochs when ``epochs`` gives fewer optimizer steps than this; 0 = off.
    """

    name = "synergy"

    def __init__(
        self, epochs: int, batch_size: int, m_per_cluster: int, hooks: Sequence[EndOfEpochHook] = (),
        min_steps: int = 0,
    ) -> None:
        self.epochs, self.batch_size, self.m_per_cluster = int(epochs), int(batch_size), int(m_per_cluster)
        self.min_steps = int(min_steps)
        self.hooks = list(hooks)
        self.epoch_losses: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], hooks: Sequence[EndOfEpochHook] = ()) -> SynergyStage:
        """The stage the ``synergy`` section describes (its other keys configure the losses and optimizer)."""
        return cls(config["epochs"], config["batch_size"], config["m_per_cluster"], hooks=hooks,
                   min_steps=config["min_steps"])

    def steps_per_epoch(self, num_images: int, num_processes: int) -> int:
        """Optimizer steps of one epoch: the sampler covers every image once, about N / (batch × processes)."""
        return math.ceil(num_images / (self.batch_size * num_processes))

    def planned_epochs(self, num_images: int, num_processes: int) -> int:
        """The epochs the stage runs: ``epochs``, or more to reach ``min_steps``."""
        return resolve_epochs(self.epochs, self.min_steps, self.steps_per_epoch(num_images, num_processes))

    def run(self, context: StageContext) -> None:
        _require_labels(context, self.name)
        steps = self.steps_per_epoch(len(context.batches), context.accelerator.num_processes)
        configured, self.epochs = self.epochs, resolve_epochs(self.epochs, self.min_steps, steps)
        if context.state.epoch < self.epochs:
            announce_epochs(context, "synergy", configured, self.epochs, self.min_steps, steps)
        state = context.state
        if state.epoch == 0:
            context.labelling.init_prototypes(context.embed())
        sampler = self.sampler(context)
        context.stage_model.train()
        for loss in context.losses.loss_funcs.values():
            loss.train()
        while state.epoch < self.epochs:
            self.epoch_losses = self.train_epoch(context, sampler)
            state.epoch += 1
            context.labelling.sync_prototypes()
            for hook in self.hooks:
                hook(context.hook_context, self)

    def sampler(self, context: StageContext) -> PseudoLabelSampler:
        """The batch sampler of this stage, sharded over the run's processes."""
        return PseudoLabelSampler(
            context.state.labels.numpy(), context.batches.domains.numpy(), batch_size=self.batch_size,
            m=self.m_per_cluster, seed=context.batches.seed,
            num_replicas=context.accelerator.num_processes, rank=context.accelerator.process_index,
        )

    def train_epoch(self, context: StageContext, sampler: PseudoLabelSampler) -> dict[str, float]:
        """One epoch; returns the mean of each loss term."""
        acc = context.accelerator
        sampler.set_labels(context.state.labels.numpy())
        sampler.set_epoch(context.state.epoch)
        loader = context.batches.sampled_loader(sampler)
        totals: dict[str, float] = {}
        steps = 0
        batches = context.progress(loader, f"synergy epoch {context.state.epoch + 1}/{self.epochs}")
        for step, (images, domains, index) in enumerate(batches):
            with acc.accumulate(context.stage_model):
                terms = self.compute_losses(context, images, domains.to(context.device), index)
                context.check_finite(terms, step)
                acc.backward(context.losses.total(terms))
                context.optimizer.step()
                context.optimizer.zero_grad()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item()
            steps += 1
        return {name: total / max(1, steps) for name, total in totals.items()}

    def compute_losses(self, context: StageContext, images, domains, index) -> dict[str, torch.Tensor]:
        """Every loss term of one batch, keyed by name (unweighted)."""
        v1, v2 = context.batches.views(images)
        with context.accelerator.autocast():
            e1 = context.stage_model(v1, domains)["embedding"].float()
            e2 = context.stage_model(v2, domains)["embedding"].float()
        batch = SynergyBatch(e1, e2, domains, context.state.labels[index].to(context.device),
                             context.state.keep_mask[index].to(context.device), context.batches.num_clusters)
        return context.losses.compute(batch)
