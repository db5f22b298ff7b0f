"""Combined ``domain * num_clusters + cluster`` labels.

pml losses, miners and samplers take one ``labels`` tensor and no domain argument. Components
that need the domain of each sample (prompt losses, the prompt miner) read it from a combined
label, so they still drop into any pml call.
"""

from __future__ import annotations

import torch


def encode_domain_labels(
    domains: torch.Tensor, clusters: torch.Tensor, num_clusters: int
) -> torch.Tensor:
    """Combine domain ids and cluster ids into one label per sample.

    Args:
        domains: Domain id per sample, shape (N,), values in [0, D).
        clusters: Cluster id per sample, shape (N,), values in [0, num_clusters).
        num_clusters: C, the number of clusters per domain.

    Returns:
        Long tensor ``domains * num_clusters + clusters``.
    """
    domains = torch.as_tensor(domains).long()
    clusters = torch.as_tensor(clusters).long()
    if clusters.numel() and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise ValueError(f"cluster ids must lie in [0, {num_clusters}), got "
                         f"[{int(clusters.min())}, {int(clusters.max())}]")
    if domains.numel() and domains.min() < 0:
        raise ValueError("domain ids must be non-negative")
    return domains * num_clusters + clusters


def decode_domain_labels(
    labels: torch.Tensor, num_clusters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split combined labels into ``(domains, clusters)``; inverse of :func:`encode_domain_labels`."""
    labels = torch.as_tensor(labels).long()
    if labels.numel() and labels.min() < 0:
        raise ValueError("combined labels must be non-negative")
    return torch.div(labels, num_clusters, rounding_mode="floor"), labels % num_clusters


def check_labels_have_prompts(labels: torch.Tensor, domains: torch.Tensor, num_domains: int, num_clusters: int) -> None:
    """Refuse combined labels whose domain has no prompts (text features of ``num_domains`` domains).

    Raises:
        ValueError: Naming the labels, the number of prompts and the fix.
    """
    outside = domains >= num_domains
    if outside.any():
        num_prompts = num_domains * num_clusters
        raise ValueError(f"labels {labels[outside].unique()[:8].tolist()} match none of the {num_prompts} prompts "
                         f"({num_domains} domains x {num_clusters} clusters) of the text features; pass combined "
                         f"labels domain * {num_clusters} + cluster below {num_prompts}, or set the text features "
                         "of every domain")
