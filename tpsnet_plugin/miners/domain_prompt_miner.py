"""Cross-domain pair miner that refines pseudo-labels with the domain prompts (text prior)."""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning.miners import BaseMiner

from ..text_prior.prompt_features import PromptFeatures
from ..text_prior.relabel import relabel_with_prompts
from ..utils.domain_labels import check_labels_have_prompts, decode_domain_labels, encode_domain_labels


class DomainPromptMiner(BaseMiner):
    """Mine cross-domain positive pairs and all negative pairs from text-refined pseudo-labels.

    Labels are combined ``domain * num_clusters + cluster`` labels (see
    :func:`tpsnet_plugin.utils.encode_domain_labels`), so the miner drops into any pml call.
    Each sample's cluster is first refined with the text prior
    (:func:`~tpsnet_plugin.text_prior.relabel_with_prompts`): with ``T_d`` the ``C`` prompt
    features of the sample's domain, ``p = softmax(logit_scale * cos(embedding, T_d))``; where
    ``max(p) >= threshold`` the cluster becomes ``argmax(p)``, elsewhere the label's cluster is
    kept. Without text features the labels are used as given; with them, every label must name a
    domain of the text features.

    The output is pml's pair tuple ``(a1, p, a2, n)`` indexing ``embeddings`` (``a1``, ``a2``) and
    ``ref_emb`` (``p``, ``n``): a positive pair shares the refined cluster and comes from two
    different domains (the cross-domain pairs that align the domains); a negative pair has
    different refined clusters, from any domains. A sample is never paired with itself when
    ``ref_emb`` is ``embeddings``, since a self-pair is neither cross-domain nor cross-cluster.

    After each call, ``refined_labels`` holds the combined labels of ``embeddings`` after
    refinement and ``num_changed`` how many of them changed; with pml's ``collect_stats``,
    ``num_changed``, ``num_pos_pairs`` and ``num_neg_pairs`` are also recorded stats.

    Args:
        num_clusters: C, the number of clusters per domain used to decode the combined labels.
        text_features: Optional prompt features ``T`` of shape (D, C, e); see
            :meth:`set_text_features`. ``None`` disables the refinement (until features are set).
        threshold: Softmax confidence needed to replace a sample's cluster by the prompt argmax
            (above 1: never).
        logit_scale: Multiplier of the cosine similarities before the softmax, finite and
            positive (CLIP's ``logit_scale.exp()``, 100 for trained CLIP models).
        prompt_features: The :class:`~tpsnet_plugin.text_prior.PromptFeatures` holder of T to read,
            shared with the model (``model.prompt_features``); None = a holder of its own.
        **kwargs: Passed to pml's ``BaseMiner`` (e.g. ``collect_stats``); the distance is unused.
    """

    def __init__(
        self,
        num_clusters: int,
        text_features: torch.Tensor | None = None,
        threshold: float = 0.5,
        logit_scale: float = 100.0,
        prompt_features: PromptFeatures | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_clusters) < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if math.isnan(threshold):
            raise ValueError("threshold is NaN, which silently turns the refinement off; pass a "
                             "softmax confidence such as 0.5 (above 1 to turn it off)")
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be a finite number > 0 (a non-positive one picks the "
                             f"least similar prompt), got {logit_scale}; pass CLIP's "
                             "exp(logit_scale), e.g. learner.logit_scale (100 for the OpenAI weights)")
        self.num_clusters = int(num_clusters)
        self.threshold = float(threshold)
        self.logit_scale = float(logit_scale)
        # A reader, not an owner: the holder stays out of this module's state dict and .to() (the model
        # saves and moves it); the features are moved to the embeddings' device when read.
        holder = prompt_features if prompt_features is not None else PromptFeatures()
        object.__setattr__(self, "prompt_features", holder)
        if text_features is not None:
            self.set_text_features(text_features)
        self.refined_labels: torch.Tensor | None = None
        self.num_changed = 0
        self.add_to_recordable_attributes(
            list_of_names=["num_clusters", "threshold", "logit_scale"], is_stat=False
        )
        self.add_to_recordable_attributes(name="num_changed", is_stat=True)

    @property
    def text_features(self) -> torch.Tensor | None:
        """The prompt features T (D×C×e) the refinement reads, or None (no refinement)."""
        return self.prompt_features.features

    def set_text_features(self, text_features: torch.Tensor | None) -> None:
        """Set (or clear, with ``None``) the prompt features used to refine the labels.

        Args:
            text_features: Tensor of shape (D, C, e): for each domain, one feature per cluster
                prompt. It is stored detached in :attr:`prompt_features` (every reader of a shared
                holder sees it); it need not be normalised but must be finite.
        """
        if text_features is not None:
            text_features = torch.as_tensor(text_features)
            if text_features.ndim != 3 or text_features.shape[1] != self.num_clusters:
                raise ValueError(
                    "text_features must have shape (num_domains, num_clusters, embedding_size) with "
                    f"num_clusters={self.num_clusters}, got {tuple(text_features.shape)}"
                )
            text_features = text_features.float()
        self.prompt_features.set(text_features)

    def refine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the combined labels after refinement with the text prior.

        Args:
            embeddings: Tensor of shape (N, e).
            labels: Combined labels of shape (N,).

        Returns:
            Long tensor of shape (N,) with the refined combined labels (same domains).
        """
        labels = torch.as_tensor(labels)
        domains, clusters = decode_domain_labels(labels, self.num_clusters)
        if self.text_features is not None:
            text = self.prompt_features.require(self.num_clusters, type(self).__name__)
            check_labels_have_prompts(labels, domains, len(text), self.num_clusters)
            clusters = relabel_with_prompts(embeddings, text, domains, clusters,
                                            self.logit_scale, self.threshold)
        return encode_domain_labels(domains, clusters, self.num_clusters)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        refined = self.refine(embeddings, labels)
        if ref_emb is embeddings and ref_labels is labels:
            ref_refined = refined
        else:
            ref_refined = self.refine(ref_emb, ref_labels)
        self.refined_labels = refined
        self.num_changed = int((refined != labels).sum())

        domains, clusters = decode_domain_labels(refined, self.num_clusters)
        ref_domains, ref_clusters = decode_domain_labels(ref_refined, self.num_clusters)
        same_cluster = clusters.unsqueeze(1) == ref_clusters.unsqueeze(0)
        cross_domain = domains.unsqueeze(1) != ref_domains.unsqueeze(0)
        a1, p = torch.where(same_cluster & cross_domain)
        a2, n = torch.where(~same_cluster)
        return a1, p, a2, n
