"""What a stage and an end-of-epoch hook may use of the run: the few parts they need, not the trainer.

:class:`~tpsnet_plugin.training.TPSNetTrainer` builds one :class:`StageContext` and one
:class:`HookContext` from its parts; a custom stage or hook uses nothing else, and a custom
orchestrator builds them from its own parts. True labels are in neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from ..models import TPSNet
from ..text_prior import DomainPromptLearner
from .batches import TrainingBatches
from .checkpoint import RunCheckpoints
from .loss_guard import LossGuard
from .loss_terms import LossTable
from .pseudo_labelling import PseudoLabelling
from .reporting import RunRecords
from .run_evaluation import Embedder, EpochEmbeddings, RunEvaluator
from .setup import LearningRates
from .state import TrainingState


@dataclass
class HookContext:
    """The run as an end-of-epoch hook sees it.

    Attributes:
        accelerator: Logging and printing.
        state: Stage and epoch (``state.epoch`` epochs are complete), pseudo-labels.
        epoch_embeddings: ``epoch_embeddings()``: this epoch's retrieval embedding, computed once.
        labelling: Re-clustering and the prototypes.
        evaluator: Retrieval quality (true labels) and the label-free score.
        records: The run's history (``record_evaluation``).
        checkpoints: The run's checkpoints.
    """

    accelerator: Accelerator
    state: TrainingState
    epoch_embeddings: EpochEmbeddings
    labelling: PseudoLabelling
    evaluator: RunEvaluator
    records: RunRecords
    checkpoints: RunCheckpoints

    def save(self, tag: str) -> Path:
        """Write a resumable checkpoint named ``tag`` at the current stage and epoch."""
        return self.checkpoints.save(tag, self.state.stage, self.state.epoch)


@dataclass
class StageContext:
    """The run as a stage sees it.

    Attributes:
        accelerator: Sharding, gradient accumulation, autocast, logging, printing.
        state: Stage, epoch, pseudo-labels and confident-image mask (``labels``, ``keep_mask``).
        batches: The training images: loaders, two augmented views, domains, C.
        model: The TPSNet (``set_text_features`` installs the prompts).
        stage_model: The wrapped model the optimizer trains (``synergy=False``: the backbone only).
        optimizer: Its optimizer.
        learning_rates: ``learning_rates(lr)`` / ``learning_rates()`` (back to the synergy rates).
        losses: The synergy stage's loss table.
        prompt_learner: The domain prompts on the frozen CLIP, or None without the text prior.
        embed: Every image's embedding in dataset order (:class:`Embedder`).
        labelling: Clustering into aligned pseudo-labels, re-pairing records, the prototypes.
        check_finite: ``check_finite(terms, step)`` stops the run at a NaN/inf loss term.
        progress: ``progress(iterable, desc)``: a progress bar that also checks for a stop signal.
        hook_context: What the stage's end-of-epoch hooks receive.
    """

    accelerator: Accelerator
    state: TrainingState
    batches: TrainingBatches
    model: TPSNet
    stage_model: nn.Module
    optimizer: torch.optim.Optimizer
    learning_rates: LearningRates
    losses: LossTable
    prompt_learner: DomainPromptLearner | None
    embed: Embedder
    labelling: PseudoLabelling
    check_finite: LossGuard
    progress: Callable[[Iterable, str], Iterable]
    hook_context: HookContext

    @property
    def device(self) -> torch.device:
        return self.accelerator.device
