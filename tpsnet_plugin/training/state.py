"""The trainer's own resumable state, checkpointed by Accelerate next to model and optimizer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# The trainer's default stages, in order; "done" follows the last stage of any run.
STAGE_ORDER = ("warmup", "cluster", "prompts", "synergy", "done")


class TrainingState:
    """Where the run is and what it has learned besides the weights.

    Registered with ``Accelerator.register_for_checkpointing``, so ``save_state`` / ``load_state``
    carry it. Its ``state_dict`` holds only tensors and plain Python values, so a checkpoint loads
    with ``torch.load(weights_only=True)``.

    Args:
        stage_names: The run's stages, in order (default: the trainer's own, :data:`STAGE_ORDER`).

    Attributes:
        stage: The stage running or next to run (one of ``stage_names``, or ``"done"``).
        epoch: Epochs of ``stage`` completed.
        labels: Aligned cluster id per image (N), or None before the first clustering.
        keep_mask: Per image, whether the cluster losses train on it (N, bool).
        history: Evaluation and clustering records, in order.
        elapsed_before: Wall seconds spent before the current process started (resume).
    """

    def __init__(self, stage_names: Sequence[str] = STAGE_ORDER[:-1]) -> None:
        if len(set(stage_names)) != len(stage_names) or "done" in stage_names or not stage_names:
            raise ValueError(f"stage names must be distinct, not 'done', and at least one; got {list(stage_names)}")
        self.stage_names = (*stage_names, "done")
        self.stage = self.stage_names[0]
        self.epoch = 0
        self.labels: torch.Tensor | None = None
        self.keep_mask: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self._started = time.time()

    @property
    def elapsed(self) -> float:
        """Wall seconds of the run so far, across resumes."""
        return self.elapsed_before + time.time() - self._started

    def restart_clock(self) -> None:
        self._started = time.time()

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "labels": self.labels,
            "keep_mask": self.keep_mask,
            "history": self.history,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] not in self.stage_names:
            raise ValueError(f"Checkpoint names the stage {state['stage']!r}, which this run does not have "
                             f"(its stages: {', '.join(self.stage_names)})")
        self.stage, self.epoch = state["stage"], int(state["epoch"])
        self.labels, self.keep_mask = state["labels"], state["keep_mask"]
        self.history = list(state["history"])
        self.elapsed_before = float(state["elapsed"])
        self.restart_clock()


class PromptContext:
    """Checkpoint adapter for a ``DomainPromptLearner``: only its learned context vectors.

    The frozen CLIP is rebuilt from the config, so saving it with every checkpoint would only
    cost disk.
    """

    def __init__(self, learner: nn.Module) -> None:
        self.learner = learner

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self.learner.state_dict().items() if "context" in name}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.learner.load_state_dict(state, strict=False)
