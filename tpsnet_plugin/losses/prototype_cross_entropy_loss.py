"""Prototype cross-entropy L_pce with shared, EMA-updated cluster prototypes."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ._similarity import similarity_matrix

__all__ = ["PrototypeCrossEntropyLoss"]


class PrototypeCrossEntropyLoss(BaseMetricLossFunction):
    """Cross-entropy over cosine similarities to shared cluster prototypes.

    Like pml's ``NormalizedSoftmaxLoss`` (logits ``cos(embedding, P_c) / temperature``), but the
    prototypes P (C×e, unit norm) are not trained by gradient: they are a buffer (saved in the
    state dict), initialised from cluster centroids with :meth:`init_prototypes` and, in
    training mode only, moved after each loss computation by
    ``P_c <- normalize(momentum * P_c + (1 - momentum) * mean of the normalised batch embeddings
    with label c)``; a batch with a NaN or inf embedding leaves them unchanged (with a warning,
    once) and gives a non-finite loss. The prototypes are shared by all domains, so labels are
    cluster ids (use ``decode_domain_labels(labels, C)[1]`` on combined labels); matched cluster
    ids make this loss pull the domains together.

    Wrap it in ``DistributedLossWrapper`` for multi-process training: the update then sees the
    gathered global batch and the prototypes stay identical on every rank. An empty batch gives a
    zero loss.

    Args:
        num_classes: C, the number of clusters.
        embedding_size: e, the embedding width.
        temperature: Softmax temperature τ_p, finite and positive.
        momentum: EMA momentum m in [0, 1]; 1 freezes the prototypes.
        **kwargs: pml options (``reducer``, ``distance``, ``embedding_regularizer``, ...). The
            distance defaults to ``CosineSimilarity``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 0.05,
        momentum: float = 0.9,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}; pass a "
                             "softmax temperature such as 0.05")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer(
            "prototypes", F.normalize(torch.randn(num_classes, embedding_size), dim=1)
        )
        self._warned_non_finite = False
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size", "temperature", "momentum"],
            is_stat=False,
        )

    @torch.no_grad()
    def init_prototypes(self, centroids: torch.Tensor) -> None:
        """Set the prototypes to the L2-normalised cluster centroids.

        Args:
            centroids: C×e cluster centres, row c for cluster c; they must be finite.
        """
        if centroids.shape != self.prototypes.shape:
            raise ValueError(f"centroids must have shape {tuple(self.prototypes.shape)} "
                             f"(num_classes x embedding_size), got {tuple(centroids.shape)}")
        if not torch.isfinite(centroids).all():
            raise ValueError("centroids contain NaN or inf values, which would make the prototypes "
                             "non-finite for good; pass the finite centres of the clusters")
        self.prototypes.copy_(F.normalize(centroids.float(), dim=1))

    @torch.no_grad()
    def update_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """One EMA step of the prototypes of the clusters present in ``labels``.

        Called by the loss after computing it in training mode; call it directly to update from
        features computed elsewhere. Non-finite (NaN or inf) embeddings leave the prototypes
        unchanged, with a warning the first time.

        Args:
            embeddings: N×e embeddings (normalised here).
            labels: Cluster id per embedding, shape (N,).
        """
        self._check_labels(labels)
        if not torch.isfinite(embeddings).all():
            if not self._warned_non_finite:
                warnings.warn("PrototypeCrossEntropyLoss got non-finite (NaN or inf) embeddings; "
                              "the prototypes were not updated from this batch", RuntimeWarning,
                              stacklevel=2)
                self._warned_non_finite = True
            return
        device = self.prototypes.device
        embeddings = F.normalize(embeddings.detach().float(), dim=1).to(device)
        labels = labels.to(device)
        sums = torch.zeros_like(self.prototypes).index_add_(0, labels, embeddings)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1).to(sums.dtype)
        updated = self.momentum * self.prototypes[present] + (1.0 - self.momentum) * means
        self.prototypes[present] = F.normalize(updated, dim=1)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        self._check_labels(labels)
        if len(embeddings) == 0:
            return self.zero_losses()
        # A copy: the EMA step below changes the buffer in place, and backward still needs it.
        prototypes = self.prototypes.to(embeddings.device).clone()
        logits = similarity_matrix(self.distance, embeddings, prototypes) / self.temperature
        losses = F.cross_entropy(logits, labels, reduction="none")
        miner_weights = lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)
        if self.training:
            self.update_prototypes(embeddings, labels)
        return {
            "loss": {
                "losses": losses * miner_weights,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
            }
        }

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be cluster ids in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]; decode combined labels "
                             "with decode_domain_labels(labels, num_clusters)[1]")

    def get_default_distance(self):
        return CosineSimilarity()
