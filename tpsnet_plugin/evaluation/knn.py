"""Exact top-k inner-product search, ties broken by gallery index, with torch and faiss backends.

``torch.topk`` and faiss order tied items their own way. Here the ranking is by (-similarity,
gallery index), what a stable descending sort of each similarity row gives: both backends take
the top k+1 candidates, re-sort them by (-similarity, index) and recompute exactly the rows whose
k-th and (k+1)-th similarities tie (where the backend chose which tied items to return). The two
backends therefore rank identically, up to the last-bit rounding differences of their float32
dot-product kernels.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

__all__ = ["KNN_BACKENDS", "StableFaissKNN", "StableTorchKNN", "make_knn_func", "top_k"]

KNN_BACKENDS = ("auto", "faiss", "torch")


@torch.no_grad()
def top_k(
    query,
    gallery,
    k: int,
    knn: str = "auto",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k gallery items of largest inner product with each query, ties broken by lower index.

    Vectors are compared as given, in float32 (normalise them first for the cosine).

    Args:
        query: Query vectors (N, d), tensor or array.
        gallery: Gallery vectors (M, d), on the device of ``query``.
        k: Neighbours per query, at least 1; a k above M returns the whole gallery ranked.
        knn: ``"faiss"`` (exact ``IndexFlatIP``, GPU with faiss-gpu and CUDA inputs), ``"torch"``
            (batched matrix products) or ``"auto"`` (faiss when importable, else torch).
        batch_size: Queries per similarity block of the torch search (memory ~ batch_size × M).

    Returns:
        ``(similarities, indices)``, each (N, min(k, M)), best first.
    """
    query, gallery = (torch.as_tensor(x).float() for x in (query, gallery))
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery must be (N, d) and (M, d) matrices of one width, got "
                         f"shapes {tuple(query.shape)} and {tuple(gallery.shape)}")
    if len(gallery) == 0:
        raise ValueError("the gallery is empty")
    if not (torch.isfinite(query).all() and torch.isfinite(gallery).all()):
        raise ValueError("query and gallery must not contain NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return make_knn_func(knn, batch_size)(query, min(k, len(gallery)), gallery)


def make_knn_func(knn: str = "auto", batch_size: int = 256) -> StableTorchKNN | StableFaissKNN:
    """The pml ``knn_func`` of a backend name (see :func:`top_k`).

    Args:
        knn: ``"auto"``, ``"faiss"`` or ``"torch"``.
        batch_size: Queries per similarity block of the torch search.

    Returns:
        A pml-compatible kNN: ``knn_func(query, k, reference, ref_includes_query=False)``.
    """
    if knn not in KNN_BACKENDS:
        raise ValueError(f"knn must be one of {KNN_BACKENDS}, got {knn!r}")
    exact = StableTorchKNN(batch_size)
    if knn == "torch":
        return exact
    try:
        import faiss
    except ImportError:
        if knn == "faiss":
            raise ImportError('knn="faiss" needs faiss: pip install "tpsnet-plugin[cpu]" (or '
                              '"tpsnet-plugin[gpu]"), or use knn="torch"') from None
        return exact
    return StableFaissKNN(faiss.IndexFlatIP, exact)


class StableTorchKNN(CustomKNN):
    """pml ``CustomKNN`` (batched inner product) whose top k is ordered by (-similarity, index).

    Args:
        batch_size: Queries per similarity block.
    """

    def __init__(self, batch_size: int = 256) -> None:
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        # a plain dot product: pml's CosineSimilarity would renormalise the whole gallery for
        # every query block, which costs more than the matrix product
        super().__init__(DotProductSimilarity(normalize_embeddings=False), batch_size=batch_size)

    def __call__(self, query, k, reference, ref_includes_query=False):
        _check_separate_gallery(ref_includes_query)
        similarities = query.new_empty(len(query), k)
        indices = torch.empty(len(query), k, dtype=torch.long, device=query.device)

        def keep_top_k(block, start, end):
            similarities[start:end], indices[start:end] = _cut_to_top_k(
                *block.topk(min(k + 1, block.shape[1]), dim=1), k,
                lambda rows: _stable_top_k(block[rows], k))

        self.distance.iter_fn = keep_top_k
        self.distance(query, reference)
        return similarities, indices


class StableFaissKNN(FaissKNN):
    """pml ``FaissKNN`` (inner product) with faiss's arbitrary choice among tied items undone.

    Args:
        index_init_fn: faiss index constructor, e.g. ``faiss.IndexFlatIP``.
        exact: The torch search that recomputes the rows whose cut falls inside a tie.
    """

    def __init__(self, index_init_fn, exact: StableTorchKNN) -> None:
        super().__init__(index_init_fn=index_init_fn)
        self.exact = exact

    def __call__(self, query, k, reference, ref_includes_query=False):
        _check_separate_gallery(ref_includes_query)
        return _cut_to_top_k(*super().__call__(query, min(k + 1, len(reference)), reference), k,
                             lambda rows: self.exact(query[rows], k, reference))


def _check_separate_gallery(ref_includes_query: bool) -> None:
    if ref_includes_query:
        raise ValueError("this kNN searches a separate gallery: ref_includes_query must be "
                         "False")


def _cut_to_top_k(similarities, indices, k, exact_rows):
    """The top k by (-similarity, index), from the top k+1 candidates of a search in any order.

    Items that are not candidates are <= the last candidate, so where the k-th and (k+1)-th
    similarities differ the cut is exact. Where they tie, the search chose among tied items in its
    own way: those rows are recomputed by ``exact_rows(row_mask)``.
    """
    similarities, indices = _sort_by_similarity_then_index(similarities, indices)
    if similarities.shape[1] > k:
        tied = similarities[:, k - 1] == similarities[:, k]
        if tied.any():
            similarities[tied, :k], indices[tied, :k] = exact_rows(tied)
    return similarities[:, :k], indices[:, :k]


def _stable_top_k(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row by (-similarity, column), exact under ties, without sorting whole rows."""
    kth = similarities.topk(k, dim=1).values[:, -1:]
    above = similarities > kth
    tied = similarities == kth
    # of the items tied with the k-th value, keep the lowest columns that still fit
    keep = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
    columns = keep.nonzero()[:, 1].view(len(similarities), k)
    return _sort_by_similarity_then_index(similarities.gather(1, columns), columns)


def _sort_by_similarity_then_index(similarities: torch.Tensor, indices: torch.Tensor):
    indices, by_index = indices.sort(dim=1)
    similarities, order = similarities.gather(1, by_index).sort(dim=1, descending=True,
                                                                stable=True)
    return similarities, indices.gather(1, order)
