"""Stopping a run at the first NaN or infinite loss, with what to change and how to go on."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import TPSNetError
from .checkpoint import RunCheckpoints
from .state import TrainingState

# The learning-rate options of each stage, named when its loss turns NaN.
LEARNING_RATE_KEYS = {"warmup": ("warmup.lr",), "prompts": ("prompts.lr",)}


class NonFiniteLossError(TPSNetError, RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left untouched."""


class LossGuard:
    """``guard(terms, step)`` raises :class:`NonFiniteLossError` on a NaN/inf loss term.

    The message names the term, stage, epoch and step, the stage's learning-rate options and how to
    continue (resume from the last checkpoint where the rates may change, else start again).

    Args:
        state: The run's state (stage and epoch).
        checkpoints: The run's checkpoints (the last good one is named).
    """

    def __init__(self, state: TrainingState, checkpoints: RunCheckpoints) -> None:
        self.state, self.checkpoints = state, checkpoints

    def __call__(self, terms: Mapping[str, torch.Tensor], step: int) -> None:
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                stage = self.state.stage
                rates = LEARNING_RATE_KEYS.get(stage, ("synergy.lr_backbone", "synergy.lr_head"))
                latest = self.checkpoints.latest()
                if stage == "synergy" and latest is not None:  # its learning rates may change on resume
                    then = f"The last good checkpoint ({latest.name}) is kept: continue with --resume."
                else:
                    then = f"Start again with --overwrite ({' and '.join(rates)} cannot change on resume)."
                raise NonFiniteLossError(
                    f"Loss term '{name}' is {value.item()} in stage '{stage}', epoch {self.state.epoch}, step {step}. "
                    f"Lower {' and '.join(rates)} (or disable mixed precision). {then}"
                )
