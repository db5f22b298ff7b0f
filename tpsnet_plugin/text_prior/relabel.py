"""Re-label samples with the domain prompts: the text prior's correction of cluster pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["relabel_with_prompts"]

# Rows per similarity block: bounds the rows x D x C scores when a whole data set is re-labelled.
_BLOCK_ROWS = 16384


@torch.no_grad()
def relabel_with_prompts(
    features: torch.Tensor,
    text_features: torch.Tensor,
    domains: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    threshold: float,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Replace each cluster label by its domain's most probable prompt where the prompts are confident.

    With ``T_d`` the C prompt features of sample i's domain,
    ``p = softmax(logit_scale * cos(features[i], T_d))``; the label becomes ``argmax(p)`` where
    ``max(p) >= threshold`` and stays ``labels[i]`` elsewhere. Scores are computed in float32
    (float64 for float64 features), without gradient.

    Args:
        features: Image features, shape (N, e).
        text_features: Prompt features T, shape (D, C, e): one per domain and cluster.
        domains: Domain id per sample, shape (N,), values in [0, D).
        labels: Cluster id per sample, shape (N,), values in [0, C).
        logit_scale: Multiplier of the cosines before the softmax (CLIP's ``exp(logit_scale)``).
        threshold: Softmax confidence needed to replace a label.
        normalize: L2-normalise ``features`` and ``text_features`` first, so the score is the
            cosine whatever their norms. Pass False when both are already unit vectors: the dot
            product is then used as is (the cosine, without re-normalising).

    Returns:
        Long tensor of shape (N,): the new cluster id per sample, on the device of ``features``.
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    features = features.to(dtype)
    text = torch.as_tensor(text_features).to(device=features.device, dtype=dtype)
    domains = torch.as_tensor(domains, device=features.device).long()
    labels = torch.as_tensor(labels, device=features.device).long()
    if features.ndim != 2 or text.ndim != 3:
        raise ValueError(f"features must be (N, e) and text_features (D, C, e), got shapes "
                         f"{tuple(features.shape)} and {tuple(text.shape)}")
    num_domains, num_clusters, width = text.shape
    if features.shape[1] != width:
        raise ValueError(f"features have size {features.shape[1]} but text_features have size "
                         f"{width}")
    if domains.shape != (len(features),) or labels.shape != (len(features),):
        raise ValueError(f"domains and labels need one entry per feature row ({len(features)}), "
                         f"got shapes {tuple(domains.shape)} and {tuple(labels.shape)}")
    if len(features) == 0:
        return labels.clone()
    outside = (domains < 0) | (domains >= num_domains)
    if outside.any():
        raise ValueError(f"domains contain domain {int(domains[outside][0])} but text_features "
                         f"cover {num_domains} domains")
    if normalize:
        features, text = F.normalize(features, dim=1), F.normalize(text, dim=2)
    prompts = text.reshape(-1, width).T
    refined = torch.empty_like(labels)
    for start in range(0, len(features), _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        # One matmul against all D*C prompts, then keep the block of each sample's own domain:
        # no per-domain indexing (and no host sync) inside a training step.
        scores = (features[rows] @ prompts).view(-1, num_domains, num_clusters)
        scores = scores[torch.arange(len(scores), device=scores.device), domains[rows]]
        confidence, best = torch.softmax(logit_scale * scores, dim=1).max(dim=1)
        refined[rows] = torch.where(confidence >= threshold, best, labels[rows])
    return refined
