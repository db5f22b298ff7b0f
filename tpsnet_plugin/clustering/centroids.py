"""Centroids of labelled features, and the samples closest to them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_index_tensor(values, name: str, length: int, device) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.shape != (length,) or values.is_floating_point() or values.is_complex():
        raise ValueError(f"{name} must be {length} ints, got shape {tuple(values.shape)} and {values.dtype}")
    if length and values.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return values.to(device=device, dtype=torch.long)


def cluster_centroids(
    features: torch.Tensor | np.ndarray, labels, num_clusters: int, normalize: bool = True
) -> torch.Tensor | np.ndarray:
    """Centroid of every cluster.

    Args:
        features: Samples, tensor or array of shape (N, e).
        labels: Cluster id per sample, N ints in [0, num_clusters) (tensor, array or list).
        num_clusters: C, the number of centroids.
        normalize: L2-normalise the samples before averaging and the means after (spherical
            centroids); else plain means.

    Returns:
        Centroids of shape (C, e), of the type of ``features`` (same device for a tensor;
        float32 when ``features`` are ints). A cluster without members gets a zero vector.
    """
    is_numpy = not isinstance(features, torch.Tensor)
    x = torch.from_numpy(np.asarray(features)) if is_numpy else features
    if x.ndim != 2:
        raise ValueError(f"features must be (N, e), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    labels = _as_index_tensor(labels, "labels", len(x), x.device)
    if len(labels) and labels.max() >= num_clusters:
        raise ValueError(f"labels must be < num_clusters={num_clusters}, got {int(labels.max())}")
    if normalize:
        x = F.normalize(x, dim=-1)
    sums = torch.zeros(num_clusters, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    if normalize:
        centroids = F.normalize(sums, dim=-1)
    else:
        counts = torch.bincount(labels, minlength=num_clusters).clamp_(min=1)
        centroids = sums / counts.unsqueeze(1).to(sums.dtype)
    return centroids.numpy() if is_numpy else centroids


def confident_mask(
    features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, keep_ratio: float
) -> torch.BoolTensor:
    """Per (domain, cluster), the members closest to their centroid.

    In every (domain, cluster) group of n samples, keeps the ``max(1, ceil(keep_ratio * n))``
    with the highest cosine to the group's normalised centroid (see :func:`cluster_centroids`).

    Args:
        features: Samples, tensor of shape (N, e).
        labels: Cluster id per sample, (N,) non-negative ints.
        domains: Domain id per sample, (N,) non-negative ints.
        keep_ratio: Fraction of each group to keep, > 0; ``>= 1`` keeps every sample.

    Returns:
        Bool tensor of shape (N,) on the device of ``features``, True for kept samples.
    """
    keep_ratio = float(keep_ratio)
    if not keep_ratio > 0:
        raise ValueError(f"keep_ratio must be > 0, got {keep_ratio}")
    features = torch.as_tensor(features)
    n = len(features)
    labels = _as_index_tensor(labels, "labels", n, features.device)
    domains = _as_index_tensor(domains, "domains", n, features.device)
    if keep_ratio >= 1 or n == 0:
        return torch.ones(n, dtype=torch.bool, device=features.device)
    num_clusters = int(labels.max()) + 1
    groups = domains * num_clusters + labels
    num_groups = int(groups.max()) + 1
    x = F.normalize(features.float() if not features.is_floating_point() else features, dim=-1)
    centroids = cluster_centroids(x, groups, num_groups)
    scores = (x * centroids[groups]).sum(dim=1)
    # rank of every sample within its group, by decreasing score
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sizes = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=features.device) - starts[groups[order]]
    cut = torch.ceil(sizes.double() * keep_ratio).long().clamp_(min=1)
    return rank < cut[groups]
