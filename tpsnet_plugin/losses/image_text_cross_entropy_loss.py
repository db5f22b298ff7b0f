"""Image-to-text cross-entropy L_i2tce against the frozen domain prompts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..text_prior.prompt_features import PromptFeatures
from ..utils.domain_labels import check_labels_have_prompts, decode_domain_labels
from ._similarity import similarity_matrix

__all__ = ["ImageTextCrossEntropyLoss"]


class ImageTextCrossEntropyLoss(BaseMetricLossFunction):
    """Label-smoothed cross-entropy of image embeddings over their own domain's prompts.

    For sample i with combined label ``d_i * C + c_i`` the logits are
    ``logit_scale * cos(embedding_i, T[d_i, c])`` for c = 0..C-1 and the target is c_i, smoothed
    to ``(1 - label_smoothing) * onehot(c_i) + label_smoothing / C``.

    The text features T are frozen in the synergy stage and are read from a
    :class:`~tpsnet_plugin.text_prior.PromptFeatures` holder (not passed per call), so
    ``DistributedLossWrapper`` only gathers embeddings and labels. Pass the model's holder
    (``prompt_features=model.prompt_features``) to read the features the model uses, or set them
    here with :meth:`set_text_features`. Every label must name a domain of the text features; an
    empty batch gives a zero loss.

    Args:
        num_clusters: C, the number of clusters (prompts) per domain.
        label_smoothing: ε of the smoothed targets, in [0, 1).
        logit_scale: Multiplier of the cosine similarities, finite and positive; pass the prompt
            learner's ``logit_scale``. 100 is the value of the OpenAI CLIP weights.
        prompt_features: The holder of T to read, shared with the model; None = a holder of its own.
        **kwargs: pml options (``reducer``, ``distance``, ``embedding_regularizer``, ...). The
            distance defaults to ``CosineSimilarity``.
    """

    def __init__(
        self,
        num_clusters: int,
        label_smoothing: float = 0.1,
        logit_scale: float = 100.0,
        prompt_features: PromptFeatures | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be at least 1, got {num_clusters}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a finite number > 0 (a non-positive one reverses "
                             f"the objective), got {logit_scale}; pass CLIP's exp(logit_scale), "
                             "e.g. learner.logit_scale (100 for the OpenAI weights)")
        self.num_clusters = num_clusters
        self.label_smoothing = label_smoothing
        self.logit_scale = logit_scale
        # A reader, not an owner: the holder stays out of this module's state dict and .to() (the model
        # saves and moves it); the features are moved to the embeddings' device when read.
        holder = prompt_features if prompt_features is not None else PromptFeatures()
        object.__setattr__(self, "prompt_features", holder)
        self.add_to_recordable_attributes(
            list_of_names=["num_clusters", "label_smoothing", "logit_scale"], is_stat=False
        )

    @property
    def text_features(self) -> torch.Tensor | None:
        """The prompt features T (D×C×e) this loss reads, or None before they are set."""
        return self.prompt_features.features

    @torch.no_grad()
    def set_text_features(self, text_features: torch.Tensor) -> None:
        """Set the (frozen) prompt features used as the classifier.

        Args:
            text_features: D×C×e features, or D·C×e with row ``d * C + c`` for prompt (d, c).
                They are detached and stored in float32 in :attr:`prompt_features` (every reader of a
                shared holder sees them), and must be finite.
        """
        if text_features.ndim == 2:
            if text_features.shape[0] % self.num_clusters:
                raise ValueError(f"{text_features.shape[0]} text feature rows are not a multiple "
                                 f"of num_clusters={self.num_clusters}; pass D*C rows (d*C + c)")
            text_features = text_features.reshape(-1, self.num_clusters, text_features.shape[1])
        if text_features.ndim != 3 or text_features.shape[1] != self.num_clusters:
            raise ValueError(f"text_features must be D x {self.num_clusters} x e (or D*C x e), "
                             f"got shape {tuple(text_features.shape)}")
        self.prompt_features.set(text_features.float())

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        text = self.prompt_features.require(self.num_clusters, type(self).__name__).to(embeddings.device)
        num_domains = text.shape[0]
        domains, clusters = decode_domain_labels(labels, self.num_clusters)
        check_labels_have_prompts(labels, domains, num_domains, self.num_clusters)
        if len(embeddings) == 0:
            return self.zero_losses()
        similarities = similarity_matrix(self.distance, embeddings, text.flatten(0, 1))
        # Keep each sample's own domain: (N, D, C) -> (N, C).
        similarities = similarities.view(-1, num_domains, self.num_clusters)
        similarities = similarities[torch.arange(len(labels), device=labels.device), domains]
        losses = F.cross_entropy(self.logit_scale * similarities, clusters, reduction="none",
                                 label_smoothing=self.label_smoothing)
        miner_weights = lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)
        return {
            "loss": {
                "losses": losses * miner_weights,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
            }
        }

    def get_default_distance(self):
        return CosineSimilarity()
