"""Per-domain k-means pseudo-labels with cluster ids aligned across domains.

Building blocks, composed by :class:`ClusterPseudoLabeler`::

    from tpsnet_plugin.clustering import FaissKMeans, SklearnKMeans, create_kmeans
    from tpsnet_plugin.clustering import ConsensusAlignment, ReferenceAlignment, match_centroids
    from tpsnet_plugin.clustering import cluster_centroids, confident_mask
"""

from .alignment import (
    BaseAlignment,
    ConsensusAlignment,
    ReferenceAlignment,
    create_alignment,
    match_centroids,
)
from .base_kmeans import BaseKMeans, assign
from .centroids import cluster_centroids, confident_mask
from .faiss_kmeans import FaissKMeans
from .kmeans import create_kmeans, faiss_gpu_available
from .pseudo_labeler import ClusterPseudoLabeler, ClusterResult
from .sklearn_kmeans import SklearnKMeans

__all__ = [
    "BaseAlignment",
    "BaseKMeans",
    "ClusterPseudoLabeler",
    "ClusterResult",
    "ConsensusAlignment",
    "FaissKMeans",
    "ReferenceAlignment",
    "SklearnKMeans",
    "assign",
    "cluster_centroids",
    "confident_mask",
    "create_alignment",
    "create_kmeans",
    "faiss_gpu_available",
    "match_centroids",
]
