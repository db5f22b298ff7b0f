"""Pseudo-labels from clustering, and the batch sampler that follows them."""

from .cluster_pseudo_labeler import ClusterPseudoLabeler, ClusterResult
from .pseudo_label_sampler import PseudoLabelSampler

__all__ = ["ClusterPseudoLabeler", "ClusterResult", "PseudoLabelSampler"]
