"""The UCDIR retrieval metrics (P@k with the UCDIR cut-off, mAP@All) on pml's AccuracyCalculator."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from .average_precision import average_precisions, counts_ranks, relevant_counts
from .knn import make_knn_func

__all__ = ["UCDIRAccuracyCalculator"]

_MAP_METRICS = ("map_at_all", "map_at_all_voc")


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
      when every R_q >= k. Uses the kNN (depth ``max(ks)``) through pml's ``requires_knn``; when
      ``map_at_all`` is computed too (and ``map_at_all_voc`` is not), the mAP pass already finds
      the exact rank of every relevant item, so P@k is read from those ranks and no kNN runs.
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
    what a stable sort of the similarities in descending order gives. The kNN is
    :func:`~tpsnet_plugin.evaluation.knn.make_knn_func`'s, the mAPs are
    :func:`~tpsnet_plugin.evaluation.average_precision.average_precisions`; both rank this way,
    and the faiss and torch kNN paths agree up to the last-bit rounding differences of their
    float32 dot-product kernels.

    mAP@All needs the full ranking; it is computed per block of ``batch_size`` queries, never as
    an N×M matrix. Peak extra memory is about ``40 * batch_size * M`` bytes (60 with
    ``map_at_all_voc``); the torch kNN needs less.

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
        self._gallery_size = 0
        precision_names = [f"precision_at_{k}" for k in self.ks]
        # pml collects the metrics from the ``calculate_<name>`` attributes it finds with dir()
        for k, name in zip(self.ks, precision_names):
            setattr(self, f"calculate_{name}", functools.partial(self._precision_at_k, k))
        self._ucdir_metrics = (*precision_names, *_MAP_METRICS)
        if len(include) == 0:
            include = (*precision_names, "map_at_all", *(("map_at_all_voc",) if voc_map else ()))
        super().__init__(include=include, exclude=exclude, knn_func=make_knn_func(knn, batch_size),
                         **kwargs)

    def requires_knn(self) -> list[str]:
        """pml's kNN metrics, plus ``precision_at_<k>`` unless the mAP@All pass ranks for them."""
        precision_names = [f"precision_at_{k}" for k in self.ks]
        if self._precision_from_ranks():  # pml lists its own precision_at_1, ours replaces it
            return [n for n in super().requires_knn() if n not in precision_names]
        return super().requires_knn() + precision_names

    def _precision_from_ranks(self) -> bool:
        # The mAP@All pass finds every relevant item's exact rank, which also gives P@k: with
        # map_at_all requested (and no VOC mAP, which sorts instead) the kNN pass is skipped.
        curr = self.curr_function_dict
        return "map_at_all" in curr and counts_ranks(self._gallery_size, voc="map_at_all_voc" in curr)

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
        self._gallery_size = len(reference)
        return super().get_accuracy(query, query_labels, reference, reference_labels, False,
                                    include, exclude)

    def _get_accuracy(self, function_dict, **kwargs):
        kwargs["num_relevant"] = relevant_counts(kwargs["query_labels"], kwargs["reference_labels"])
        if function_dict.keys() & set(_MAP_METRICS):
            kwargs["aps"] = average_precisions(
                kwargs["query"], kwargs["reference"], kwargs["query_labels"],
                kwargs["reference_labels"], voc="map_at_all_voc" in function_dict,
                batch_size=self.batch_size, ks=() if "knn_labels" in kwargs else self.ks)
            kwargs["rank_hits"] = kwargs["aps"].pop("hits", None)
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

    def _precision_at_k(self, k, query_labels, num_relevant, knn_labels=None, rank_hits=None,
                        **kwargs) -> float:
        cutoff = num_relevant.clamp(max=k)  # min(k, R_q); 0 drops the query
        total = int(cutoff.sum())
        if total == 0:
            return float("nan")
        if rank_hits is not None:
            return 100.0 * int(rank_hits[:, self.ks.index(k)].sum()) / total
        same = knn_labels[:, :k] == query_labels[:, None]
        within = torch.arange(same.shape[1], device=same.device) < cutoff[:, None]
        return 100.0 * int((same & within).sum()) / total

    def calculate_map_at_all(self, aps, num_relevant, **kwargs) -> float:
        """Non-interpolated mAP over the whole gallery, in percent."""
        return _mean_percent(aps["ap"], num_relevant)

    def calculate_map_at_all_voc(self, aps, num_relevant, **kwargs) -> float:
        """VOC all-point interpolated mAP over the whole gallery, in percent."""
        return _mean_percent(aps["voc_ap"], num_relevant)

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


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if (not ks or len(set(ks)) != len(ks)
            or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks)):
        raise ValueError(f"ks must be distinct positive integers, got {ks!r}")
    return ks


def _mean_percent(aps: torch.Tensor, num_relevant: torch.Tensor) -> float:
    valid = num_relevant > 0  # queries without a relevant item (NaN AP) are dropped
    if not valid.any():
        return float("nan")
    return 100.0 * aps[valid].mean().item()
