"""Average precision over a whole gallery ranking, block by block, ties broken by gallery index.

The ranking of each query is by (-similarity, gallery index), what a stable descending sort of its
similarity row gives. Similarities are inner products of the vectors as given (normalise them
first for the cosine). Nothing of size N×M is held: queries are processed ``batch_size`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_metric_learning.distances import BatchedDistance, DotProductSimilarity

__all__ = [
    "average_precisions",
    "counts_ranks",
    "precision_sums_by_counting",
    "precision_sums_by_sorting",
    "ranking_statistics",
    "relevant_counts",
]


def average_precisions(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    voc: bool = False,
    batch_size: int = 256,
    ks: Sequence[int] = (),
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
        ks: Cut-offs for ``"hits"``, returned when the ranks are counted
            (:func:`counts_ranks`): the exact ranks found for the AP also give P@k.

    Returns:
        ``{"ap": ..., "voc_ap": ..., "hits": ...}``: ``ap`` and ``voc_ap`` (only with ``voc``)
        float64 tensors of shape (N,), values in [0, 1], NaN for queries with R_q = 0;
        ``hits`` (only with ``ks`` when :func:`counts_ranks`) as in :func:`ranking_statistics`.
    """
    counts = relevant_counts(query_labels, gallery_labels)
    if counts_ranks(len(gallery), voc):
        statistics = ranking_statistics(query, gallery, query_labels, gallery_labels, ks=ks,
                                        batch_size=batch_size)
        return {"ap": statistics["precision_sum"] / counts,
                **({"hits": statistics["hits"]} if ks else {})}
    sums = precision_sums_by_sorting(query, gallery, query_labels, gallery_labels, voc=voc,
                                     batch_size=batch_size)
    return {name: values / counts for name, values in sums.items()}


def counts_ranks(gallery_size: int, voc: bool = False) -> bool:
    """Whether :func:`average_precisions` counts ranks (:func:`ranking_statistics`) or sorts rows.

    Counting is faster and also gives P@k, but cannot interpolate (VOC AP) and needs galleries of
    at most 2**26 items (the rank keys).
    """
    return not voc and _rank_key_shift(gallery_size) is not None


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

    The ``"precision_sum"`` of :func:`ranking_statistics`; galleries too large for the rank keys
    (over 2**26 items) go through :func:`precision_sums_by_sorting`.

    Args:
        query: Query vectors (N, d), compared in float32.
        gallery: Gallery vectors (M, d).
        query_labels: Label per query, shape (N,).
        gallery_labels: Label per gallery item, shape (M,).
        batch_size: Queries per similarity block.

    Returns:
        float64 tensor (N,); 0 for queries with R_q = 0.
    """
    if not counts_ranks(len(gallery)):
        return precision_sums_by_sorting(query, gallery, query_labels, gallery_labels, voc=False,
                                         batch_size=batch_size)["ap"]
    return ranking_statistics(query, gallery, query_labels, gallery_labels,
                              batch_size=batch_size)["precision_sum"]


def ranking_statistics(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (),
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per query, the exact rank of every relevant gallery item, summarised, in one pass.

    Only the relevant items' ranks matter: rank = (relevant items above it) + (non-relevant items
    above it) + 1. Queries of one label share their relevant set (R items); per query block the
    similarities to the whole gallery are one matrix product, the R relevant rank keys
    (:func:`_rank_keys`: the gallery index folded into the similarity, so ties are broken by index
    exactly as a stable sort does) are sorted, and the non-relevant items are placed among them by
    :func:`_non_relevant_counts`. Work is one GEMM plus a few passes over the similarity block,
    never a sort of the gallery.

    Args:
        query: Query vectors (N, d), compared in float32.
        gallery: Gallery vectors (M, d), at most 2**26 items.
        query_labels: Label per query, shape (N,).
        gallery_labels: Label per gallery item, shape (M,).
        ks: Cut-offs for ``"hits"``.
        batch_size: Queries per similarity block.

    Returns:
        ``"precision_sum"``: float64 (N,), the sum over relevant items of the precision at their
        rank (the AP times R_q); ``"hits"``: long (N, len(ks)), column j the number of relevant
        items among the top ``min(ks[j], R_q)``. Both 0 for queries with R_q = 0.
    """
    query, gallery = query.float(), gallery.float()  # the rank keys assume float32 similarities
    shift = _rank_key_shift(len(gallery))
    if shift is None:
        raise ValueError(f"a gallery of {len(gallery)} items is too large for the rank keys "
                         f"(at most 2**26); use precision_sums_by_sorting")
    device = query.device
    sums = torch.zeros(len(query), dtype=torch.float64, device=device)
    hits = torch.zeros(len(query), len(ks), dtype=torch.long, device=device)
    # Queries sorted by label, in blocks of batch_size whatever the class sizes (one efficient
    # GEMM per block); each block is then cut into its runs of one label.
    order = torch.argsort(query_labels, stable=True)
    run_labels, run_lengths = torch.unique_consecutive(query_labels[order], return_counts=True)
    run_ends = run_lengths.cumsum(0).tolist()
    runs = list(zip([0, *run_ends[:-1]], run_ends, run_labels.tolist()))
    relevant_of: dict[int, torch.Tensor] = {}
    for block_start in range(0, len(query), batch_size):
        block_end = min(block_start + batch_size, len(query))
        block_similarities = query[order[block_start:block_end]] @ gallery.T
        for run_start, run_end, label in runs:
            start, end = max(run_start, block_start), min(run_end, block_end)
            if start >= end:
                continue
            if label not in relevant_of:
                relevant_of[label] = torch.nonzero(gallery_labels == label).flatten()
            relevant = relevant_of[label]
            num_relevant = len(relevant)
            if num_relevant == 0:
                continue  # R_q = 0: no relevant rank to sum over
            rows = order[start:end]
            counts = _non_relevant_counts(
                block_similarities[start - block_start:end - block_start], relevant, shift)
            # non-relevant items above the relevant item at ascending position a: below > a
            above = counts.flip(1).cumsum(1).flip(1)[:, 1:].flip(1).double()
            positions = torch.arange(1, num_relevant + 1, dtype=torch.float64, device=device)
            ranks = positions + above  # of the relevant items, best first
            sums[rows] = (positions / ranks).sum(1)
            if ks:
                cutoffs = torch.tensor([min(k, num_relevant) for k in ks], dtype=torch.float64,
                                       device=device)
                hits[rows] = (ranks[:, :, None] <= cutoffs).sum(1)
    return {"precision_sum": sums, "hits": hits}


def _non_relevant_counts(similarities: torch.Tensor, relevant: torch.Tensor,
                         shift: int) -> torch.Tensor:
    """Per row, how many non-relevant columns have exactly j relevant items ranked below them.

    Returns a long tensor (rows, R + 1), column j for j = 0..R. A binary search of every column
    among the row's R sorted relevant keys costs tens of ns per item. Instead the range of the
    relevant similarities is cut into K equal buckets by a monotone map, and the columns are
    counted per bucket (one scatter): a bucket holding no relevant item lies between the same
    relevant items as all its columns, so its count moves as a whole. Only columns sharing a
    bucket with a relevant item (a few percent, and every exact tie) compare rank keys, by a
    vectorised binary search within their bucket.
    """
    num_rows, num_relevant = len(similarities), len(relevant)
    device = similarities.device
    relevant_similarities = similarities[:, relevant]
    ascending = _rank_keys(relevant_similarities, relevant, shift).sort(dim=1).values
    num_buckets = min(max(32 * num_relevant, 64), 16384)
    low = relevant_similarities.min(1, keepdim=True).values
    scale = (num_buckets - 1) / (relevant_similarities.max(1, keepdim=True).values - low)
    scale = torch.where(torch.isfinite(scale), scale, 0.0)  # one value: everything in one bucket

    def bucket(values):
        # Monotone in value: 0 below the relevant range, 1..num_buckets over it, num_buckets + 1
        # above. (values - low) is exactly 0 at the lowest relevant item, which must not share
        # bucket 0 with everything below it.
        return torch.sub(values, low).mul_(scale).floor_().add_(1).clamp_(0, num_buckets + 1).long()

    def per_row_histogram(index):
        return torch.zeros(num_rows, num_buckets + 2, dtype=torch.long, device=device).scatter_add_(
            1, index, torch.ones((), dtype=torch.long, device=device).expand(index.shape))

    relevant_per_bucket = per_row_histogram(bucket(relevant_similarities))
    relevant_up_to = relevant_per_bucket.cumsum(1)  # relevant items in this bucket or lower ones
    occupied = relevant_per_bucket > 0
    buckets = bucket(similarities)
    # columns per bucket, minus the relevant columns themselves (each counted in its own bucket)
    others_per_bucket = per_row_histogram(buckets) - relevant_per_bucket
    counts = torch.zeros(num_rows, num_relevant + 1, dtype=torch.long, device=device)
    counts.scatter_add_(1, relevant_up_to, others_per_bucket.masked_fill(occupied, 0))
    shared = occupied.gather(1, buckets)
    shared[:, relevant] = False
    # flat positions (row * width + column): 1-D takes are much cheaper than 2-D indexing
    flat = shared.view(-1).nonzero().squeeze(1)
    if len(flat):
        width = similarities.shape[1]
        rows = flat.div(width, rounding_mode="floor")
        keys = _rank_keys(similarities.reshape(-1).take(flat), flat - rows * width, shift)
        bucket_at = rows * (num_buckets + 2) + buckets.view(-1).take(flat)
        high_pos = relevant_up_to.view(-1).take(bucket_at)
        low_pos = high_pos - relevant_per_bucket.view(-1).take(bucket_at)
        # lower bound of the key among the bucket's relevant keys (ascending[row, low:high])
        row_start = rows * num_relevant
        for _ in range(int((high_pos - low_pos).max()).bit_length()):
            middle = (low_pos + high_pos) // 2
            less = ascending.view(-1).take(row_start + middle.clamp(max=num_relevant - 1)) < keys
            less &= middle < high_pos
            low_pos = torch.where(less, middle + 1, low_pos)
            high_pos = torch.where(less, high_pos, middle)
        counts.view(-1).index_add_(0, rows * (num_relevant + 1) + low_pos, torch.ones_like(low_pos))
    return counts


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
