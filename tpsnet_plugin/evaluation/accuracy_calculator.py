"""The UCDIR retrieval metrics (P@k with the UCDIR cut-off, mAP@All) on pml's AccuracyCalculator."""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BatchedDistance, DotProductSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

__all__ = ["UCDIRAccuracyCalculator"]

_MAP_METRICS = ("map_at_all", "map_at_all_voc")
_KNN_CHOICES = ("auto", "faiss", "torch")


class UCDIRAccuracyCalculator(AccuracyCalculator):
    """pml ``AccuracyCalculator`` computing the cross-domain retrieval metrics of prior UCDIR work.

    Queries (domain A) and gallery (domain B) are different sets, so ``get_accuracy`` needs a
    ``reference`` and always runs with ``ref_includes_query=False``. Embeddings are upcast to
    float32 (float16/bfloat16 included) and L2-normalised; the score is the cosine similarity.
    Let R_q be the number of gallery items with the class of query q and hits_q(t) the number of
    same-class items among its top t. Queries with R_q = 0 are dropped from every metric (NaN when
    no query is left). Metrics, all in percent (0-100):

    - ``precision_at_<k>`` for each k in ``ks``, the UCDIR definition, one ratio over all queries:
      ``100 * sum_q hits_q(min(k, R_q)) / sum_q min(k, R_q)``. It equals the usual mean P@k only
      when every R_q >= k. Uses the kNN (depth ``max(ks)``) through pml's ``requires_knn``.
    - ``map_at_all``: non-interpolated average precision over the whole gallery ranking (pml's
      ``mean_average_precision`` with ``k=None``), averaged over queries.
    - ``map_at_all_voc``: the VOC all-point interpolated AP (VOC2010+ devkit: precision replaced
      by its maximum at any deeper rank, integrated over recall), averaged over queries.

    The default ``include`` is these metrics only (``map_at_all_voc`` when ``voc_map``), so the
    default never needs faiss k-means or a full N×M kNN. pml's built-in metrics (NMI,
    ``mean_average_precision``, ``r_precision``, ...) can still be named in ``include``; they are
    computed by pml unchanged, from a kNN of pml's own depth (``k``), and are returned as pml
    returns them (fractions in [0, 1], not percent). pml's ``precision_at_1`` is replaced by the
    UCDIR one when 1 is in ``ks`` (on queries with R_q > 0 the two agree up to the factor 100).

    Ties are broken by gallery index: the ranking is by (-similarity, gallery index), which is
    what a stable sort of the similarities in descending order gives. ``torch.topk`` and faiss
    order tied items their own way, so both kNN paths take the top k+1 candidates, re-sort them by
    (-similarity, index) and recompute exactly the rows whose k-th and (k+1)-th similarities tie
    (where the backend chose which tied items to return). Both paths therefore rank identically,
    up to the last-bit rounding differences of the two float32 dot-product kernels.

    mAP@All needs the full ranking; it is computed per block of ``batch_size`` queries (one stable
    sort of a ``batch_size × M`` similarity block), never as an N×M matrix. Peak extra memory is
    about ``40 * batch_size * M`` bytes (60 with ``map_at_all_voc``); the torch kNN needs less.

    Args:
        ks: Cut-offs k of ``precision_at_<k>`` (1, 5, 15 for Office-Home/Office-31; 50, 100, 200
            for DomainNet). Distinct positive integers.
        voc_map: Also compute ``map_at_all_voc`` by default.
        knn: kNN backend for ``precision_at_<k>``: ``"faiss"`` (pml ``FaissKNN``, exact inner
            product on the normalised float32 embeddings, GPU when faiss-gpu and CUDA inputs),
            ``"torch"`` (pml ``CustomKNN``, batched cosine similarity) or ``"auto"``
            (faiss when importable, else torch).
        batch_size: Queries per similarity block of the torch kNN and of the mAP pass.
        include: Metrics to compute; empty means the UCDIR metrics above.
        exclude: Metrics to leave out.
        **kwargs: Other ``AccuracyCalculator`` arguments: ``device`` (default CUDA when
            available) and ``avg_of_avgs``, ``return_per_class``, ``k``, ``label_comparison_fn``,
            ``kmeans_func``, which only affect pml's built-in metrics. ``knn_func`` is set by
            ``knn`` and cannot be passed.
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 15),
        voc_map: bool = False,
        knn: str = "auto",
        batch_size: int = 256,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        **kwargs,
    ) -> None:
        if "knn_func" in kwargs:
            raise TypeError("UCDIRAccuracyCalculator chooses its kNN itself: pass knn='faiss' or "
                            "knn='torch' instead of knn_func")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.ks = _check_ks(ks)
        self.batch_size = batch_size
        precision_names = [f"precision_at_{k}" for k in self.ks]
        # pml collects the metrics from the ``calculate_<name>`` attributes it finds with dir()
        for k, name in zip(self.ks, precision_names):
            setattr(self, f"calculate_{name}", functools.partial(self._precision_at_k, k))
        self._ucdir_metrics = (*precision_names, *_MAP_METRICS)
        if len(include) == 0:
            include = (*precision_names, "map_at_all", *(("map_at_all_voc",) if voc_map else ()))
        super().__init__(include=include, exclude=exclude, knn_func=_make_knn_func(knn, batch_size),
                         **kwargs)

    def requires_knn(self) -> list[str]:
        """pml's kNN metrics plus ``precision_at_<k>`` (mAP@All ranks the gallery itself)."""
        return super().requires_knn() + [f"precision_at_{k}" for k in self.ks]

    def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
        """kNN depth: ``max(ks)``, or pml's own depth when a built-in kNN metric needs more."""
        depth = min(max(self.ks), num_reference_embeddings)
        if self._builtin_knn_metrics():
            depth = max(depth, super().determine_k(bin_counts, num_reference_embeddings,
                                                   ref_includes_query))
        return depth

    def get_accuracy(
        self,
        query,
        query_labels,
        reference,
        reference_labels,
        ref_includes_query: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> dict[str, float]:
        """Compute the metrics for queries of one domain against the gallery of another.

        Args:
            query: Query embeddings, (N, d) tensor or array, any floating dtype.
            query_labels: Integer class label per query, shape (N,) (pml casts labels to
                float32, so they must stay below 2**24).
            reference: Gallery embeddings, (M, d).
            reference_labels: Class label per gallery item, shape (M,).
            ref_includes_query: Must be False: the gallery never contains the queries.
            include: Metrics for this call; empty means those chosen at construction.
            exclude: Metrics to leave out for this call.

        Returns:
            Metric name -> value (UCDIR metrics in percent).
        """
        if ref_includes_query:
            raise ValueError("UCDIR retrieval searches a gallery from another domain, so "
                             "ref_includes_query must be False")
        query, reference = (self._normalised_embeddings(x, name)
                            for x, name in ((query, "query"), (reference, "reference")))
        if query.shape[1] != reference.shape[1]:
            raise ValueError(f"query and reference widths differ: {query.shape[1]} vs "
                             f"{reference.shape[1]}")
        query_labels, reference_labels = (self._class_labels(x, name) for x, name in
                                          ((query_labels, "query_labels"),
                                           (reference_labels, "reference_labels")))
        return super().get_accuracy(query, query_labels, reference, reference_labels, False,
                                    include, exclude)

    def _get_accuracy(self, function_dict, **kwargs):
        kwargs["relevant_counts"] = _relevant_counts(kwargs["query_labels"],
                                                     kwargs["reference_labels"])
        if function_dict.keys() & set(_MAP_METRICS):
            kwargs["average_precisions"] = self._average_precisions(
                voc="map_at_all_voc" in function_dict, **kwargs)
        # in the order of ks, then the mAPs, then pml's metrics (pml's own order is alphabetical)
        ours = {n: function_dict[n] for n in self._ucdir_metrics if n in function_dict}
        builtin = {n: f for n, f in function_dict.items() if n not in ours}
        results = super()._get_accuracy(ours, **kwargs)
        if builtin and "knn_labels" in kwargs:
            # pml's metrics read every kNN column, so give them exactly pml's own depth
            depth = super().determine_k(kwargs["label_counts"][1], len(kwargs["reference"]),
                                        False)
            kwargs["knn_labels"] = kwargs["knn_labels"][:, :depth]
            kwargs["knn_distances"] = kwargs["knn_distances"][:, :depth]
        results.update(super()._get_accuracy(builtin, **kwargs))
        return results

    def _precision_at_k(self, k, knn_labels, query_labels, relevant_counts, **kwargs) -> float:
        cutoff = relevant_counts.clamp(max=k)  # min(k, R_q); 0 drops the query
        total = int(cutoff.sum())
        if total == 0:
            return float("nan")
        same = knn_labels[:, :k] == query_labels[:, None]
        within = torch.arange(same.shape[1], device=same.device) < cutoff[:, None]
        return 100.0 * int((same & within).sum()) / total

    def calculate_map_at_all(self, average_precisions, relevant_counts, **kwargs) -> float:
        """Non-interpolated mAP over the whole gallery, in percent."""
        return _mean_percent(average_precisions["map_at_all"], relevant_counts)

    def calculate_map_at_all_voc(self, average_precisions, relevant_counts, **kwargs) -> float:
        """VOC all-point interpolated mAP over the whole gallery, in percent."""
        return _mean_percent(average_precisions["map_at_all_voc"], relevant_counts)

    def _average_precisions(self, query, reference, query_labels, reference_labels, voc,
                            **kwargs) -> dict[str, torch.Tensor]:
        """Per query, the sum over relevant ranks of (interpolated) precision, block by block."""
        if not voc:
            return {"map_at_all": self._precision_sums_by_counting(
                query, reference, query_labels, reference_labels)}
        return self._precision_sums_by_sorting(query, reference, query_labels, reference_labels, voc)

    def _precision_sums_by_counting(self, query, reference, query_labels,
                                    reference_labels) -> torch.Tensor:
        """Non-interpolated AP sums without sorting the gallery.

        Only each relevant item's rank matters: rank = (relevant items above it) + (non-relevant
        items above it) + 1. Queries of one class share their relevant set (R items), so per
        query the R relevant keys are sorted and every non-relevant key is binary-searched among
        them (M log R work instead of M log M). The keys (:func:`_rank_keys`) fold the gallery
        index into the similarity, so ties are broken by index exactly as the stable sort does.
        """
        shift = _rank_key_shift(len(reference))
        if shift is None:
            return self._precision_sums_by_sorting(query, reference, query_labels, reference_labels,
                                                   voc=False)["map_at_all"]
        sums = torch.zeros(len(query), dtype=torch.float64, device=query.device)
        gallery_index = torch.arange(len(reference), device=reference.device)
        for label in torch.unique(query_labels):
            relevant = reference_labels == label
            num_relevant = int(relevant.sum())
            if num_relevant == 0:
                continue  # R_q = 0: dropped from the mean anyway
            rows = torch.nonzero(query_labels == label).flatten()
            relevant_ref, other_ref = reference[relevant], reference[~relevant]
            relevant_index, other_index = gallery_index[relevant], gallery_index[~relevant]
            positions = torch.arange(1, num_relevant + 1, dtype=torch.float64, device=query.device)
            for block in rows.split(self.batch_size):
                ascending = _rank_keys(query[block] @ relevant_ref.T, relevant_index, shift).sort(dim=1).values
                others = _rank_keys(query[block] @ other_ref.T, other_index, shift)
                below = torch.searchsorted(ascending, others)  # relevant items ranked below it
                counts = torch.zeros(len(block), num_relevant + 1, dtype=torch.float64,
                                     device=query.device).scatter_add_(
                    1, below, torch.ones_like(below, dtype=torch.float64))
                # non-relevant items above the relevant item at ascending position q: count > q
                above = counts.flip(1).cumsum(1).flip(1)[:, 1:].flip(1)
                sums[block] = (positions / (positions + above)).sum(1)
        return sums

    def _precision_sums_by_sorting(self, query, reference, query_labels, reference_labels,
                                   voc) -> dict[str, torch.Tensor]:
        names = _MAP_METRICS if voc else _MAP_METRICS[:1]
        sums = {n: torch.zeros(len(query), dtype=torch.float64, device=query.device) for n in names}
        ranks = torch.arange(1, len(reference) + 1, dtype=torch.float32, device=query.device)

        def accumulate(similarities, start, end):
            order = similarities.sort(dim=1, descending=True, stable=True).indices
            relevant = (reference_labels.expand(len(order), -1).gather(1, order)
                        == query_labels[start:end, None])
            # precision at each relevant rank, 0 elsewhere
            precision = torch.where(relevant, relevant.cumsum(1, dtype=torch.int32) / ranks, 0)
            sums["map_at_all"][start:end] = precision.sum(1, dtype=torch.float64)
            if voc:
                envelope = precision.flip(1).cummax(1).values.flip(1)
                sums["map_at_all_voc"][start:end] = torch.where(relevant, envelope, 0).sum(
                    1, dtype=torch.float64)

        BatchedDistance(_cosine(), accumulate, self.batch_size)(query, reference)
        return sums

    def _builtin_knn_metrics(self) -> list[str]:
        builtin_knn = set(super().requires_knn()) - set(self._ucdir_metrics)
        return [n for n in self.get_curr_metrics() if n in builtin_knn]

    def _normalised_embeddings(self, x, name: str) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, torch.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty (num_items, dim) matrix, got shape "
                             f"{tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return F.normalize(x, dim=1)

    def _class_labels(self, x, name: str) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device)
        if x.ndim != 1:
            raise ValueError(f"{name} must hold one class label per item (1-D), got shape "
                             f"{tuple(x.shape)}")
        return x


class _TorchKNN(CustomKNN):
    """pml ``CustomKNN`` (batched cosine similarity) whose top k is ordered by (-sim, index)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(_cosine(), batch_size=batch_size)

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            raise ValueError("this kNN searches a separate gallery: ref_includes_query must be "
                             "False")
        similarities = query.new_empty(len(query), k)
        indices = torch.empty(len(query), k, dtype=torch.long, device=query.device)

        def keep_top_k(block, start, end):
            similarities[start:end], indices[start:end] = _cut_to_top_k(
                *block.topk(min(k + 1, block.shape[1]), dim=1), k,
                lambda rows: _stable_top_k(block[rows], k))

        self.distance.iter_fn = keep_top_k
        self.distance(query, reference)
        return similarities, indices


class _FaissKNN(FaissKNN):
    """pml ``FaissKNN`` (inner product) with faiss's arbitrary choice among tied items undone."""

    def __init__(self, index_init_fn, exact: _TorchKNN) -> None:
        super().__init__(index_init_fn=index_init_fn)
        self.exact = exact

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            raise ValueError("this kNN searches a separate gallery: ref_includes_query must be "
                             "False")
        return _cut_to_top_k(*super().__call__(query, min(k + 1, len(reference)), reference), k,
                             lambda rows: self.exact(query[rows], k, reference))


def _make_knn_func(knn: str, batch_size: int):
    if knn not in _KNN_CHOICES:
        raise ValueError(f"knn must be one of {_KNN_CHOICES}, got {knn!r}")
    exact = _TorchKNN(batch_size)
    if knn == "torch":
        return exact
    try:
        import faiss
    except ImportError:
        if knn == "faiss":
            raise ImportError('knn="faiss" needs faiss: pip install "tpsnet-plugin[cpu]" (or '
                              '"tpsnet-plugin[gpu]"), or use knn="torch"') from None
        return exact
    return _FaissKNN(faiss.IndexFlatIP, exact)


def _cosine() -> DotProductSimilarity:
    """Cosine similarity of the embeddings ``get_accuracy`` has already L2-normalised.

    A plain dot product: pml's ``CosineSimilarity`` would renormalise the whole gallery for every
    query block, which costs more than the matrix product.
    """
    return DotProductSimilarity(normalize_embeddings=False)


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


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if (not ks or len(set(ks)) != len(ks)
            or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks)):
        raise ValueError(f"ks must be distinct positive integers, got {ks!r}")
    return ks


def _relevant_counts(query_labels: torch.Tensor, reference_labels: torch.Tensor) -> torch.Tensor:
    """R_q: the number of gallery items sharing each query's class."""
    classes, counts = torch.unique(reference_labels, return_counts=True)
    position = torch.searchsorted(classes, query_labels).clamp(max=len(classes) - 1)
    return torch.where(classes[position] == query_labels, counts[position], 0)


def _mean_percent(precision_sums: torch.Tensor, relevant_counts: torch.Tensor) -> float:
    valid = relevant_counts > 0
    if not valid.any():
        return float("nan")
    return 100.0 * (precision_sums[valid] / relevant_counts[valid]).mean().item()


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
