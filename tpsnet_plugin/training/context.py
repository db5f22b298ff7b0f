"""What a stage and an end-of-epoch hook may use of the run: typed, so that a custom stage or hook
knows its contract and a custom orchestrator knows what to provide.

:class:`~tpsnet_plugin.training.TPSNetTrainer` provides both; stages and hooks use nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .loss_terms import LossTable
from .state import TrainingState


@runtime_checkable
class StageContext(Protocol):
    """The run as a stage sees it."""

    config: Mapping[str, Any]
    accelerator: Accelerator
    device: torch.device
    state: TrainingState
    dataset: Dataset
    domains: torch.Tensor
    num_clusters: int
    num_workers: int
    model: nn.Module
    stage_model: nn.Module
    optimizer: torch.optim.Optimizer
    losses: LossTable
    prompt_learner: nn.Module | None

    def progress(self, iterable: Iterable, desc: str) -> Iterable: ...

    def train_dataset(self) -> Dataset: ...

    def shuffled_loader(self, batch_size: int, seed: int) -> DataLoader: ...

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def embed(self, synergy: bool = True, encoder: Any = None, desc: str = "embedding") -> torch.Tensor: ...

    def clip_features(self, desc: str = "CLIP features") -> torch.Tensor: ...

    def cluster(self, embeddings: torch.Tensor) -> dict[str, Any]: ...

    def record_repair(self, epoch: int, before: torch.Tensor, after: torch.Tensor, total: bool = False) -> dict: ...

    def init_prototypes(self, embeddings: torch.Tensor) -> None: ...

    def sync_prototypes(self) -> None: ...

    def set_learning_rates(self, lr: float | None = None) -> None: ...

    def check_finite(self, terms: Mapping[str, torch.Tensor], step: int) -> None: ...


@runtime_checkable
class HookContext(Protocol):
    """The run as an end-of-epoch hook sees it."""

    accelerator: Accelerator
    state: TrainingState

    def epoch_embeddings(self) -> torch.Tensor: ...

    def cluster(self, embeddings: torch.Tensor) -> dict[str, Any]: ...

    def init_prototypes(self, embeddings: torch.Tensor) -> None: ...

    def evaluate(self, embeddings: torch.Tensor | None = None) -> dict[str, dict[str, float]]: ...

    def label_free_score(self, embeddings: torch.Tensor) -> float: ...

    def record_evaluation(self, results: dict[str, dict[str, float]], label_free_score: float | None = None) -> None:
        ...

    def save(self, tag: str) -> Any: ...
