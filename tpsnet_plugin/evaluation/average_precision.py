"""Average precision over a whole gallery ranking, block by block, ties broken by gallery index.

The ranking of each query is by (-similarity, gallery index), what a stable descending sort of its
similarity row gives. Similarities are inner products of the vectors as given (normalise them
first for the cosine). Nothing of size N×M is held: queries are processed ``batch_size`` at a time.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BatchedDistance, DotProductSimilarity

__all__ = [
    "average_precisions",
    "precision_sums_by_counting",
    "precision_sums_by_sorting",
    "relevant_counts",
]


def average_precisions(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    voc: bool = False,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Average precision of every query over the full ranking of the gallery.

    With R_q the gallery items sharing query q's label, ``ap`` is the non-interpolated AP (mean
    over the R_q relevant items of the precision at their rank); ``voc_ap`` the VOC all-point
    interpolated AP (VOC2010+ devkit: precision replaced by its maximum at any deeper rank).

    Args:
        query: Query vectors (N, d), compared in float32.
        gallery: Gallery vectors (M, d), on the device of ``query``.
        query_labels: Label per query, shape (N,).
        gallery_labels: Label per gallery item, shape (M,).
        voc: Also compute ``voc_ap``. Both then come from one sort of every similarity row;
            without it, ``ap`` counts ranks instead (faster), see
            :func:`precision_sums_by_counting`.
        batch_size: Queries per similarity block (peak memory ~ 40 to 60 × batch_size × M
            bytes).

    Returns:
        ``{"ap": ..., "voc_ap": ...}`` (``voc_ap`` only with ``voc``), float64 tensors of shape
        (N,), values in [0, 1]; NaN for queries with R_q = 0.
    """
    if voc:
        sums = precision_sums_by_sorting(query, gallery, query_labels, gallery_labels, voc=True,
                                         batch_size=batch_size)
    else:
        sums = {"ap": precision_sums_by_counting(query, gallery, query_labels, gallery_labels,
                                                 batch_size=batch_size)}
    counts = relevant_counts(query_labels, gallery_labels)
    return {name: values / counts for name, values in sums.items()}


def relevant_counts(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """R_q: the number of gallery items sharing each query's label (long tensor, shape (N,))."""
    classes, counts = torch.unique(gallery_labels, return_counts=True)
    position = torch.searchsorted(classes, query_labels).clamp(max=len(classes) - 1)
    return torch.where(classes[position] == query_labels, counts[position], 0)


def precision_sums_by_counting(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per query, the sum over its relevant items of the precision at their rank, without sorting.

    Only each relevant item's rank matters: rank = (relevant items above it) + (non-relevant
    items above it) + 1. Queries of one label share their relevant set (R items), so per query
    the R relevant keys are sorted and every non-relevant key is binary-searched among them
    (M log R work instead of M log M). The keys (:func:`_rank_keys`) fold the gallery index into
    the similarity, so ties are broken by index exactly as the stable sort does. Galleries too
    large for the keys (over 2**26 items) go through :func:`precision_sums_by_sorting`.

    Args:
        query: Query vectors (N, d), compared in float32.
        gallery: Gallery vectors (M, d).
        query_labels: Label per query, shape (N,).
        gallery_labels: Label per gallery item, shape (M,).
        batch_size: Queries per similarity block.

    Returns:
        float64 tensor (N,); 0 for queries with R_q = 0.
    """
    query, gallery = query.float(), gallery.float()  # the rank keys assume float32 similarities
    shift = _rank_key_shift(len(gallery))
    if shift is None:
        return precision_sums_by_sorting(query, gallery, query_labels, gallery_labels, voc=False,
                                         batch_size=batch_size)["ap"]
    sums = torch.zeros(len(query), dtype=torch.float64, device=query.device)
    gallery_index = torch.arange(len(gallery), device=gallery.device)
    for label in torch.unique(query_labels):
        relevant = gallery_labels == label
        num_relevant = int(relevant.sum())
        if num_relevant == 0:
            continue  # R_q = 0: no relevant rank to sum over
        rows = torch.nonzero(query_labels == label).flatten()
        relevant_ref, other_ref = gallery[relevant], gallery[~relevant]
        relevant_index, other_index = gallery_index[relevant], gallery_index[~relevant]
        positions = torch.arange(1, num_relevant + 1, dtype=torch.float64, device=query.device)
        for block in rows.split(batch_size):
            ascending = _rank_keys(query[block] @ relevant_ref.T, relevant_index,
                                   shift).sort(dim=1).values
            others = _rank_keys(query[block] @ other_ref.T, other_index, shift)
            below = torch.searchsorted(ascending, others)  # relevant items ranked below it
            counts = torch.zeros(len(block), num_relevant + 1, dtype=torch.float64,
                                 device=query.device).scatter_add_(
                1, below, torch.ones_like(below, dtype=torch.float64))
            # non-relevant items above the relevant item at ascending position q: count > q
            above = counts.flip(1).cumsum(1).flip(1)[:, 1:].flip(1)
            sums[block] = (positions / (positions + above)).sum(1)
    return sums


def precision_sums_by_sorting(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    voc: bool = False,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per query, the summed (and with ``voc`` interpolated) precision at the relevant ranks.

    One stable descending sort of every ``batch_size × M`` similarity block.

    Args:
        query: Query vectors (N, d), compared in float32.
        gallery: Gallery vectors (M, d).
        query_labels: Label per query, shape (N,).
        gallery_labels: Label per gallery item, shape (M,).
        voc: Also sum the VOC-interpolated precision.
        batch_size: Queries per similarity block.

    Returns:
        ``{"ap": ..., "voc_ap": ...}`` (``voc_ap`` only with ``voc``), float64 tensors (N,).
    """
    query, gallery = query.float(), gallery.float()
    names = ("ap", "voc_ap") if voc else ("ap",)
    sums = {n: torch.zeros(len(query), dtype=torch.float64, device=query.device) for n in names}
    ranks = torch.arange(1, len(gallery) + 1, dtype=torch.float32, device=query.device)

    def accumulate(similarities, start, end):
        order = similarities.sort(dim=1, descending=True, stable=True).indices
        relevant = (gallery_labels.expand(len(order), -1).gather(1, order)
                    == query_labels[start:end, None])
        # precision at each relevant rank, 0 elsewhere
        precision = torch.where(relevant, relevant.cumsum(1, dtype=torch.int32) / ranks, 0)
        sums["ap"][start:end] = precision.sum(1, dtype=torch.float64)
        if voc:
            envelope = precision.flip(1).cummax(1).values.flip(1)
            sums["voc_ap"][start:end] = torch.where(relevant, envelope, 0).sum(
                1, dtype=torch.float64)

    BatchedDistance(DotProductSimilarity(normalize_embeddings=False), accumulate,
                    batch_size)(query, gallery)
    return sums


def _rank_key_shift(gallery_size: int) -> int | None:
    """Bits below a similarity's ulp that hold the gallery index in :func:`_rank_keys` (None: too many)."""
    shift = max(2, (gallery_size - 1).bit_length() + 2)
    return shift if shift <= 28 else None  # float64 keeps 29 bits below a float32 ulp


def _rank_keys(similarities: torch.Tensor, gallery_index: torch.Tensor, shift: int) -> torch.Tensor:
    """Float64 keys, all distinct, whose ascending order is the reverse of the ranking order
    (similarity descending, then gallery index ascending).

    ``key = s - index * ulp(s) * 2**-shift``: with ``index < 2**(shift - 2)`` the offset stays below
    half the gap to the next lower similarity value, and every term is a power-of-two multiple that
    float64 represents exactly, so equal similarities are ordered by index and nothing else moves.
    """
    magnitude = similarities.abs()
    ulp = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))) - magnitude
    return similarities.double() - gallery_index.double() * (ulp.double() * 2.0**-shift)
