"""Brute-force references shared by several test modules (plain loops and formulas, no fixtures, no tests)."""

import numpy as np
import torch.nn.functional as F


def ranked_relevance(sim_row, query_label, gallery_labels):
    """Relevance of the gallery ranked by (-similarity, gallery index)."""
    order = sorted(range(len(sim_row)), key=lambda j: (-sim_row[j], j))
    return [gallery_labels[j] == query_label for j in order]


def ref_ap(relevance):
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevance, start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits


def ref_voc_ap(relevance):
    """VOC2010+ devkit all-point interpolated AP, written as the devkit does it."""
    r = sum(relevance)
    tp = np.cumsum(relevance)
    rec = list(tp / r)
    prec = list(tp / np.arange(1, len(relevance) + 1))
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]
               for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def centred_per_domain(features, domains):
    """L2-normalised, minus each domain's own mean, normalised again: the model's retrieval post-processing."""
    features = F.normalize(features.float(), dim=-1)
    for d in domains.unique():
        features[domains == d] -= features[domains == d].mean(0)
    return F.normalize(features, dim=-1)
