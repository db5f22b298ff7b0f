"""Agreement of pseudo-labels with the true classes (diagnosis only)."""

from __future__ import annotations

import numpy as np

from ..utils.arrays import as_int_array

__all__ = ["pseudo_label_scores", "relabel_precision"]


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

    labels = as_int_array(labels, "labels")
    true_labels = as_int_array(true_labels, "true_labels")
    domains = as_int_array(domains, "domains")
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


def relabel_precision(before, after, true_labels) -> dict[str, float | int | None]:
    """How many pseudo-labels a relabelling changed, and how many of the changed ones are right.

    Pseudo-label ids are not class ids: each id of ``before`` is mapped to one class by the
    Hungarian assignment that maximises the agreement of ``before`` with the true classes (ids
    left without a class are never right). A changed label is *right* when the class of its new
    id is the sample's true class.

    Args:
        before: Pseudo-labels before the relabelling, N ints.
        after: Pseudo-labels after it, N ints (same id space).
        true_labels: True class per sample, N ints.

    Returns:
        ``changed`` (count), ``share`` (changed / N), ``right`` (changed labels now right),
        ``precision`` (right / changed, None when nothing changed), ``was_right`` (changed labels
        that were right before), and ``accuracy_before`` / ``accuracy_after`` (share of all labels right).
    """
    from scipy.optimize import linear_sum_assignment

    before = as_int_array(before, "before")
    after = as_int_array(after, "after")
    true_labels = as_int_array(true_labels, "true_labels")
    if not before.shape == after.shape == true_labels.shape:
        raise ValueError(f"before, after and true_labels must have the same length, got {len(before)}, "
                         f"{len(after)} and {len(true_labels)}")
    if len(before) and min(before.min(), after.min(), true_labels.min()) < 0:
        raise ValueError("labels must be non-negative ids")
    ids = int(max(before.max(initial=-1), after.max(initial=-1))) + 1
    classes = int(true_labels.max(initial=-1)) + 1
    agreement = np.zeros((ids, classes), dtype=np.int64)
    np.add.at(agreement, (before, true_labels), 1)
    rows, cols = linear_sum_assignment(agreement, maximize=True)
    class_of = np.full(ids, -1, dtype=np.int64)
    class_of[rows] = cols
    changed = before != after
    right_after = class_of[after] == true_labels
    right_before = class_of[before] == true_labels
    count = int(changed.sum())
    return {
        "changed": count,
        "share": count / len(before) if len(before) else 0.0,
        "right": int((changed & right_after).sum()),
        "precision": float((changed & right_after).sum() / count) if count else None,
        "was_right": int((changed & right_before).sum()),
        "accuracy_before": float(right_before.mean()) if len(before) else None,
        "accuracy_after": float(right_after.mean()) if len(before) else None,
    }
