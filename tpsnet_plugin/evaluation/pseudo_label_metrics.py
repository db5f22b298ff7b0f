"""Agreement of pseudo-labels with the true classes (diagnosis only)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pseudo_label_scores"]


def _as_int_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    return values.astype(np.int64)


def pseudo_label_scores(labels, true_labels, domains) -> dict[str, float | list[float]]:
    """NMI and adjusted Rand index of pseudo-labels against the true classes.

    Over all domains the scores include the cross-domain consistency of the ids (a class given
    different ids in two domains lowers them); per domain they measure each clustering alone.

    Args:
        labels: Pseudo-label per sample, N ints (tensor, array or list).
        true_labels: True class per sample, N ints.
        domains: Domain id per sample, N ints.

    Returns:
        ``{"nmi": float, "ari": float, "nmi_per_domain": [...], "ari_per_domain": [...]}``, the
        per-domain lists in increasing order of the domain ids present.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = _as_int_array(labels, "labels")
    true_labels = _as_int_array(true_labels, "true_labels")
    domains = _as_int_array(domains, "domains")
    if not labels.shape == true_labels.shape == domains.shape:
        raise ValueError(
            "labels, true_labels and domains must have the same length, got "
            f"{len(labels)}, {len(true_labels)} and {len(domains)}"
        )
    members = [np.flatnonzero(domains == d) for d in np.unique(domains)]
    return {
        "nmi": float(normalized_mutual_info_score(true_labels, labels)),
        "ari": float(adjusted_rand_score(true_labels, labels)),
        "nmi_per_domain": [float(normalized_mutual_info_score(true_labels[i], labels[i])) for i in members],
        "ari_per_domain": [float(adjusted_rand_score(true_labels[i], labels[i])) for i in members],
    }
