"""Cross-domain retrieval evaluation over every ordered pair of domains, and result tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .accuracy_calculator import UCDIRAccuracyCalculator

__all__ = ["cross_domain_retrieval", "evaluate_domains", "format_table", "mean_metrics"]

_METRIC_HEADERS = {"map_at_all": "mAP@All", "map_at_all_voc": "mAP@All-VOC"}


def cross_domain_retrieval(
    query,
    query_labels,
    gallery,
    gallery_labels,
    ks: Sequence[int] = (1, 5, 15),
    knn: str = "auto",
    map_at_all: bool = True,
    batch_size: int = 256,
) -> dict[str, float]:
    """UCDIR metrics of one retrieval direction (see :class:`UCDIRAccuracyCalculator`).

    Runs on the device of ``query`` when it is a tensor, else on the CPU.

    Args:
        query: Query embeddings (N, d), tensor or array; need not be normalised.
        query_labels: Class label per query, shape (N,).
        gallery: Gallery embeddings (M, d) from another domain.
        gallery_labels: Class label per gallery item, shape (M,).
        ks: Cut-offs of ``precision_at_<k>``.
        knn: ``"auto"``, ``"faiss"`` or ``"torch"``, the kNN backend.
        map_at_all: Also compute ``map_at_all``.
        batch_size: Queries per similarity block (bounds memory).

    Returns:
        ``{"precision_at_<k>": ..., "map_at_all": ...}`` in percent.
    """
    calculator = _calculator(ks, knn, map_at_all, batch_size, _device_of(query))
    return calculator.get_accuracy(query, query_labels, gallery, gallery_labels)


def evaluate_domains(
    embeddings,
    labels,
    domains,
    domain_names: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 15),
    knn: str = "auto",
    directions: Sequence[tuple[int | str, int | str]] | None = None,
    map_at_all: bool = True,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Evaluate retrieval from every domain A to every other domain B.

    Queries are all items of A, the gallery all items of B (never A).

    Args:
        embeddings: Embeddings of all items (N, d), tensor or array.
        labels: Class label per item, shape (N,).
        domains: Integer domain id per item, shape (N,).
        domain_names: Name of each domain, indexed by domain id; default ``str(id)``.
        ks: Cut-offs of ``precision_at_<k>``.
        knn: ``"auto"``, ``"faiss"`` or ``"torch"``, the kNN backend.
        directions: (query domain, gallery domain) pairs to evaluate, each given by id (int) or
            name (str); default every ordered pair of distinct domains present, by id.
        map_at_all: Also compute ``map_at_all``.
        batch_size: Queries per similarity block (bounds memory).

    Returns:
        ``"A->B"`` -> metrics of that direction, as :func:`cross_domain_retrieval` returns them.
    """
    embeddings = torch.as_tensor(embeddings)
    labels, domains = (torch.as_tensor(x, device=embeddings.device) for x in (labels, domains))
    if domains.ndim != 1 or len(domains) != len(embeddings) or len(labels) != len(embeddings):
        raise ValueError(f"embeddings, labels and domains must have one row per item, got "
                         f"{len(embeddings)}, {len(labels)} and {len(domains)} rows")
    if domains.is_floating_point():
        raise ValueError("domains must hold integer domain ids")
    ids = [int(d) for d in torch.unique(domains)]
    names = _domain_names(ids, domain_names)
    pairs = ([(a, b) for a in ids for b in ids if a != b] if directions is None
             else [(_domain_id(a, names), _domain_id(b, names)) for a, b in directions])
    calculator = _calculator(ks, knn, map_at_all, batch_size, _device_of(embeddings))
    results = {}
    for a, b in pairs:
        if a == b:
            raise ValueError(f"direction {names[a]}->{names[b]} retrieves a domain from itself; "
                             "query and gallery domains must differ")
        in_a, in_b = domains == a, domains == b
        results[f"{names[a]}->{names[b]}"] = calculator.get_accuracy(
            embeddings[in_a], labels[in_a], embeddings[in_b], labels[in_b])
    return results


def mean_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over directions (a NaN in any direction makes that mean NaN).

    Args:
        results: ``direction -> metrics``, as :func:`evaluate_domains` returns it; every direction
            must have the same metrics.

    Returns:
        Metric name -> mean over directions.
    """
    if not results:
        raise ValueError("results is empty: nothing to average")
    metrics = list(next(iter(results.values())))
    for direction, values in results.items():
        if set(values) != set(metrics):
            raise ValueError(f"direction {direction} has metrics {list(values)}, expected "
                             f"{metrics}: average results of one evaluation only")
    return {m: sum(values[m] for values in results.values()) / len(results) for m in metrics}


def format_table(
    results: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    baseline_label: str = "baseline",
) -> str:
    """Plain-text table: one row per direction plus a ``mean`` row, one column per metric.

    Args:
        results: ``direction -> metrics``, as :func:`evaluate_domains` returns it.
        baseline: Optional results of a reference method, shown in a column next to each metric
            (``-`` where the baseline lacks that direction or metric).
        baseline_label: Suffix of the baseline column headers.

    Returns:
        The table, values with two decimals, lines joined by ``\\n``.
    """
    metrics = list(mean_metrics(results))
    rows = {**results, "mean": mean_metrics(results)}
    if baseline is not None:
        baseline = dict(baseline)
        if all(d in baseline for d in results):
            baseline["mean"] = mean_metrics({d: baseline[d] for d in results})
    header = ["direction"]
    for m in metrics:
        header.append(_METRIC_HEADERS.get(m, m.replace("precision_at_", "P@")))
        if baseline is not None:
            header.append(f"{header[-1]} {baseline_label}")
    lines = [header]
    for direction, values in rows.items():
        line = [direction]
        for m in metrics:
            line.append(_format_value(values[m]))
            if baseline is not None:
                line.append(_format_value(baseline.get(direction, {}).get(m)))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])])
        for line in lines)


def _calculator(ks, knn, map_at_all, batch_size, device) -> UCDIRAccuracyCalculator:
    include = tuple(f"precision_at_{k}" for k in ks) + (("map_at_all",) if map_at_all else ())
    return UCDIRAccuracyCalculator(ks=ks, knn=knn, batch_size=batch_size, include=include,
                                   device=device)


def _device_of(x) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _domain_names(ids: list[int], domain_names: Sequence[str] | None) -> dict[int, str]:
    if domain_names is None:
        return {d: str(d) for d in ids}
    if min(ids) < 0 or max(ids) >= len(domain_names):
        raise ValueError(f"domain ids {ids} do not index domain_names of length "
                         f"{len(domain_names)}")
    return {d: str(domain_names[d]) for d in ids}


def _domain_id(domain: int | str, names: dict[int, str]) -> int:
    if isinstance(domain, (int, np.integer)) and not isinstance(domain, bool):
        if int(domain) in names:
            return int(domain)
    else:
        for d, name in names.items():
            if name == domain:
                return d
    raise ValueError(f"unknown domain {domain!r} in directions; domains present: "
                     f"{sorted(names.items())} (give an id or a name)")


def _format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
