"""Prompts-stage loss L_prompt = L_i2t + L_t2i (supervised contrastive, both directions)."""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f

from ._similarity import similarity_matrix

__all__ = ["PromptContrastiveLoss"]


class PromptContrastiveLoss(BaseMetricLossFunction):
    """Supervised contrastive loss between image features and prompt text features.

    Logits are ``logit_scale * cos(V_i, T_k)``. Positives are the pairs whose labels are equal
    (labels are combined ``domain * C + cluster`` labels, so a positive shares domain and cluster).

    - L_i2t: for each image i, ``-mean over positive prompts k of log softmax_k(logits[i, :])``,
      the softmax running over all ``ref_emb`` rows.
    - L_t2i: for each prompt row k, ``-mean over positive images i of log softmax_i(logits[:, k])``,
      the softmax running over the batch images.

    Rows without any positive are left out, but at least one image label must occur in
    ``ref_labels``; an empty batch gives a zero loss on the graph of both inputs. The two terms
    are the sub-losses ``i2t_loss`` and ``t2i_loss``; each is reduced by the reducer (mean over
    rows by default) and they are summed.

    Call ``loss(image_features, labels, ref_emb=text_features, ref_labels=text_labels)`` with
    either convention:

    - per-sample prompts (as CLIP-ReID): ``ref_emb = learner(labels)`` (N×e) and
      ``ref_labels = labels``. Prompts are weighted by how often they occur in the batch. Use
      this one under ``DistributedLossWrapper``: the gathered rows stay one per sample.
    - all prompts: ``ref_emb = learner().flatten(0, 1)`` (D·C×e) and
      ``ref_labels = torch.arange(D * C)``; only prompts that occur in the batch get a t2i term.

    Args:
        logit_scale: Multiplier of the cosine similarities, finite and positive; pass
            ``learner.logit_scale`` (CLIP's frozen ``exp(logit_scale)``). 100 is the value of the
            OpenAI CLIP weights.
        **kwargs: pml options (``reducer``, ``distance``, ``embedding_regularizer``, ...). The
            distance defaults to ``CosineSimilarity``.
    """

    def __init__(self, logit_scale: float = 100.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a finite number > 0 (a non-positive one reverses "
                             f"the objective), got {logit_scale}; pass CLIP's exp(logit_scale), "
                             "e.g. learner.logit_scale (100 for the OpenAI weights)")
        self.logit_scale = logit_scale
        self.add_to_recordable_attributes(list_of_names=["logit_scale"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.indices_tuple_not_supported(indices_tuple)
        if ref_emb is embeddings or ref_labels is None:
            raise ValueError("PromptContrastiveLoss needs the prompt text features and their "
                             "combined labels: loss(image_features, labels, ref_emb=text_features, "
                             "ref_labels=text_labels)")
        logits = self.logit_scale * similarity_matrix(self.distance, embeddings, ref_emb)
        positives = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        if len(labels) and not positives.any():
            raise ValueError(f"labels {labels.unique()[:8].tolist()} match none of the "
                             f"{len(ref_labels)} prompts in ref_labels, so the loss would be 0; "
                             "pass combined domain * C + cluster labels that occur in ref_labels")
        return {
            "i2t_loss": self._supervised_contrastive(logits, positives),
            "t2i_loss": self._supervised_contrastive(logits.t(), positives.t()),
        }

    def _supervised_contrastive(self, logits: torch.Tensor, positives: torch.Tensor) -> dict:
        """Per-row SupCon loss dict over the rows of ``logits`` that have a positive."""
        rows = positives.any(dim=1).nonzero().flatten()
        if len(rows) == 0:  # only an empty batch: a zero on the graph of the images and prompts
            return {"losses": logits.sum(), "indices": None, "reduction_type": "already_reduced"}
        logits, positives = logits[rows], positives[rows]
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        mean_log_prob_pos = torch.where(positives, log_prob, 0.0).sum(dim=1) / positives.sum(dim=1)
        return {"losses": -mean_log_prob_pos, "indices": rows, "reduction_type": "element"}

    def _sub_loss_names(self):
        return ["i2t_loss", "t2i_loss"]

    def get_default_distance(self):
        return CosineSimilarity()
