"""End-of-epoch hooks: what happens between synergy epochs (log, re-cluster, evaluate, checkpoint).

Each hook is a callable ``hook(context, stage)`` (``context``: a
:class:`~tpsnet_plugin.training.context.HookContext`) run after every epoch of a stage, in the
spirit of pytorch-metric-learning's ``end_of_epoch_hook``. ``context.state.epoch`` is the number of
epochs completed; ``stage.epochs`` the stage's length. Hooks that need embeddings share one
embedding pass per epoch through ``context.epoch_embeddings()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import HookContext


class EndOfEpochHook:
    """Base class: ``every`` epochs (0 = never) and, when ``at_end``, after the last epoch."""

    def __init__(self, every: int = 1, at_end: bool = True) -> None:
        self.every = int(every)
        self.at_end = at_end

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether the hook runs after ``epoch`` (1-based) of a stage that ends at ``last_epoch``."""
        if epoch == last_epoch:
            return self.at_end
        return bool(self.every) and epoch % self.every == 0

    def __call__(self, context: HookContext, stage: Any) -> None:
        if self.due(context.state.epoch, stage.epochs):
            self.run(context, stage)

    def run(self, context: HookContext, stage: Any) -> None:
        raise NotImplementedError


class LoggingHook(EndOfEpochHook):
    """Log the epoch's mean loss terms to the trackers as ``<stage>/<term>``."""

    def run(self, context: HookContext, stage) -> None:
        means = {f"{stage.name}/{name}": value for name, value in stage.epoch_losses.items()}
        context.accelerator.log(means, step=context.state.epoch)


class ReclusterHook(EndOfEpochHook):
    """Re-cluster with the current retrieval embedding and re-initialise the prototypes.

    Never after the last epoch: labels made there would train nothing.
    """

    def __init__(self, every: int) -> None:
        super().__init__(every, at_end=False)

    def run(self, context: HookContext, stage) -> None:
        embeddings = context.epoch_embeddings()
        context.labelling.cluster(embeddings)
        context.labelling.init_prototypes(embeddings)


class EvaluationHook(EndOfEpochHook):
    """Evaluate every ordered domain pair and record the result (always after the last epoch)."""

    def run(self, context: HookContext, stage) -> None:
        embeddings = context.epoch_embeddings()
        evaluator = context.evaluator
        context.records.record_evaluation(evaluator.evaluate(embeddings),
                                          evaluator.label_free_score(embeddings, context.state.labels))


class CheckpointHook(EndOfEpochHook):
    """Save a resumable checkpoint named ``<stage>-epochNNN`` (always after the last epoch)."""

    def run(self, context: HookContext, stage) -> None:
        context.save(f"{stage.name}-epoch{context.state.epoch:03d}")
