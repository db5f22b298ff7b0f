"""Two-view NT-Xent instance loss as one 2N×2N similarity matrix and a cross-entropy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f

from ._similarity import similarity_matrix

__all__ = ["InstanceContrastiveLoss"]


class InstanceContrastiveLoss(BaseMetricLossFunction):
    """NT-Xent over two augmented views, optionally with negatives from the anchor's domain only.

    Row i of ``embeddings`` and row i of ``ref_emb`` are two views of sample i. The 2N views are
    stacked, each view's positive is the other view of its sample and its negatives are the other
    2N - 2 views, and the loss is the mean cross-entropy of the 2N rows of the similarity matrix
    divided by the temperature. With ``within_domain=False`` this equals pml's
    ``SelfSupervisedLoss(NTXentLoss(temperature))`` in value and gradient, without materialising
    every positive × negative pair (whose memory grows with the cube of the batch size).

    With ``within_domain=True`` the negatives are restricted to the anchor's domain, so the
    network cannot lower the loss by telling domains apart.

    The call keeps pml's signature, so ``DistributedLossWrapper`` works::

        loss(view1, ref_emb=view2)              # plain NT-Xent
        loss(view1, domains, ref_emb=view2)     # within_domain=True

    Here ``labels`` are domain ids (read only when ``within_domain=True``); ``ref_labels`` must be
    None or equal to them. Each loss row is indexed by its sample, so reducers see N samples; an
    empty batch gives a zero loss.

    Args:
        temperature: Softmax temperature, finite and positive.
        within_domain: Keep only same-domain negatives; needs domain ids as ``labels``.
        **kwargs: pml options (``reducer``, ``distance``, ``embedding_regularizer``, ...). The
            distance defaults to ``CosineSimilarity``.
    """

    def __init__(self, temperature: float = 0.1, within_domain: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}; pass a "
                             "softmax temperature such as 0.1")
        self.temperature = temperature
        self.within_domain = within_domain
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.indices_tuple_not_supported(indices_tuple)
        if ref_emb is embeddings:
            raise ValueError("InstanceContrastiveLoss needs the second view: "
                             "loss(view1, ref_emb=view2) (or loss(view1, domains, ref_emb=view2))")
        if ref_emb.shape != embeddings.shape:
            raise ValueError(f"the two views must have the same shape, got "
                             f"{tuple(embeddings.shape)} and {tuple(ref_emb.shape)}")
        if ref_labels is not None and (labels is None or not torch.equal(ref_labels, labels)):
            raise ValueError("ref_labels must be None or equal to labels (the domain of each "
                             "sample, shared by its two views)")
        if self.within_domain and labels is None:
            raise ValueError("within_domain=True needs the domain id of each sample as labels: "
                             "loss(view1, domains, ref_emb=view2)")
        num = len(embeddings)
        if num == 0:
            return self.zero_losses()
        views = torch.cat([embeddings, ref_emb])
        logits = similarity_matrix(self.distance, views, views) / self.temperature
        excluded = torch.eye(2 * num, dtype=torch.bool, device=logits.device)
        if self.within_domain:
            domains = torch.cat([labels, labels])
            excluded |= domains.unsqueeze(1) != domains.unsqueeze(0)
        logits = logits.masked_fill(excluded, float("-inf"))
        sample = torch.arange(num, device=logits.device)
        partner = torch.cat([sample + num, sample])
        return {
            "loss": {
                "losses": F.cross_entropy(logits, partner, reduction="none"),
                "indices": torch.cat([sample, sample]),
                "reduction_type": "element",
            }
        }

    def get_default_distance(self):
        return CosineSimilarity()
