"""The run's pseudo-labels: clustering, the confident-sample mask, prompt re-pairings, the prototypes.

True labels reach this module only for the diagnostics it records (NMI/ARI of a clustering, how
many re-paired labels are right); the labels and masks it produces never depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast

from ..clustering import ClusterPseudoLabeler, cluster_centroids, confident_mask
from ..evaluation import relabel_precision
from .loss_terms import LossTable
from .state import TrainingState


class PseudoLabelling:
    """Cluster the run's embeddings into aligned pseudo-labels and keep the prototypes in step.

    Args:
        labeler: The clusterer (per-domain k-means, aligned ids).
        state: The run's state: ``labels`` and ``keep_mask`` are written here.
        losses: The loss table (its ``prototype`` loss, when built, gets the centroids).
        accelerator: The run's accelerator (rank 0's labels are broadcast; prototypes averaged).
        domains: Domain id per image (N).
        true_labels: Class per image (N), for the diagnostics only.
        domain_names: The domains' names, in id order.
        num_clusters: C.
        keep_ratio: ``cluster.keep_ratio``: the share of each cluster the cluster losses train on.
        record: Called with each clustering and re-pairing record (the run's history).
    """

    def __init__(self, labeler: ClusterPseudoLabeler, state: TrainingState, losses: LossTable,
                 accelerator: Accelerator, domains: torch.Tensor, true_labels: np.ndarray, domain_names: list[str],
                 num_clusters: int, keep_ratio: float, record: Callable[[Mapping[str, Any]], None]) -> None:
        self.labeler, self.state, self.losses, self.accelerator = labeler, state, losses, accelerator
        self.domains, self.true_labels, self.domain_names = domains, true_labels, domain_names
        self.num_clusters, self.keep_ratio, self.record = num_clusters, float(keep_ratio), record

    def cluster(self, embeddings: torch.Tensor) -> dict[str, Any]:
        """Cluster per domain, align ids, update labels and keep-mask; returns the clustering record."""
        result = self.labeler.fit(embeddings.numpy(), self.domains.numpy(), true_labels=self.true_labels)
        # Every process clusters the same gathered features; rank 0's labels are authoritative.
        labels = broadcast(torch.as_tensor(result.labels, dtype=torch.long).to(self.accelerator.device),
                           from_process=0).cpu()
        self.state.labels = labels
        self.state.keep_mask = confident_mask(F.normalize(embeddings, dim=-1), labels, self.domains, self.keep_ratio)
        per_domain = result.nmi_per_domain
        info = {
            "ids_changed": result.ids_changed,
            "matching_cost": float(result.matching_cost),
            "nmi": _as_float(result.nmi),
            "ari": _as_float(result.ari),
            "nmi_per_domain": dict(zip(self.domain_names, map(float, per_domain))) if per_domain is not None else None,
        }
        self.accelerator.print("clustering: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k != "nmi_per_domain"
        ))
        self.record({"stage": self.state.stage, "epoch": self.state.epoch, "clustering": info})
        return info

    def record_repair(self, epoch: int, before: torch.Tensor, after: torch.Tensor, total: bool = False) -> dict:
        """Log a prompts-stage re-pairing (how many labels changed, and how many of those are right: diagnostics only).

        Args:
            epoch: The prompt epoch of the re-pairing (the stage's last epoch for the total).
            before: Pseudo-labels before it (for the total: at the start of the stage).
            after: Pseudo-labels after it.
            total: This record is the stage's total (start of the stage vs its end).
        """
        info = {"repair": "total" if total else "step", **relabel_precision(before, after, self.true_labels)}
        precision = info["precision"]
        self.accelerator.print(
            f"prompts stage: {'in all, ' if total else ''}re-paired {info['changed']} labels "
            f"({100 * info['share']:.2f} %)"
            + ("" if precision is None else f", {100 * precision:.1f} % of them right (diagnostic, uses labels)"))
        self.record({"stage": "prompts", "epoch": epoch, "repair": info})
        return info

    def init_prototypes(self, embeddings: torch.Tensor) -> None:
        """Start the shared prototypes at the cluster centroids of ``embeddings``."""
        if "prototype" in self.losses.loss_funcs:
            centroids = cluster_centroids(embeddings, self.state.labels, self.num_clusters)
            self.losses.loss_funcs["prototype"].init_prototypes(centroids.to(self.accelerator.device))

    def sync_prototypes(self) -> None:
        """Average the EMA prototypes over processes (each process updated them on its own batches)."""
        if self.accelerator.num_processes > 1 and "prototype" in self.losses.loss_funcs:
            prototypes = self.losses.loss_funcs["prototype"].prototypes
            prototypes.copy_(F.normalize(self.accelerator.reduce(prototypes.clone(), reduction="mean"), dim=-1))


def _as_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("overall", None)
    return None if value is None else float(value)
