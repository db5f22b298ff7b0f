import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import (
    cross_domain_retrieval,
    evaluate_domains,
    format_table,
    mean_metrics,
)


def reference_metrics(query, query_labels, gallery, gallery_labels, ks):
    """P@k (UCDIR cut-off) and mAP@All with plain loops, ties broken by gallery index."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ g.astype(np.float64).T
    hits, cutoffs, aps = {k: 0 for k in ks}, {k: 0 for k in ks}, []
    for i, label in enumerate(query_labels):
        relevance = [gallery_labels[j] == label
                     for j in sorted(range(len(g)), key=lambda j: (-sim[i, j], j))]
        r = sum(relevance)
        if r == 0:
            continue
        for k in ks:
            hits[k] += sum(relevance[:min(k, r)])
            cutoffs[k] += min(k, r)
        found, total = 0, 0.0
        for rank, rel in enumerate(relevance, start=1):
            found += rel
            total += rel * found / rank
        aps.append(total / r)
    return {**{f"precision_at_{k}": 100 * hits[k] / cutoffs[k] for k in ks},
            "map_at_all": 100 * np.mean(aps)}


def three_domains(seed=0):
    rng = np.random.default_rng(seed)
    domains = np.repeat([0, 1, 2], [30, 25, 35])
    labels = rng.integers(0, 5, len(domains))
    centers = rng.standard_normal((5, 12))
    noise = 1.5 * rng.standard_normal((len(domains), 12))
    embeddings = (centers[labels] + noise).astype(np.float32)
    return embeddings, labels, domains


@pytest.mark.parametrize("knn", ["faiss", "torch"])
def test_cross_domain_retrieval_matches_reference_for_numpy_and_torch(knn):
    embeddings, labels, domains = three_domains()
    a, b = domains == 0, domains == 1
    args = (embeddings[a], labels[a], embeddings[b], labels[b])
    result = cross_domain_retrieval(*args, ks=(1, 4, 10), knn=knn)
    assert result == pytest.approx(reference_metrics(*args, ks=(1, 4, 10)))
    assert list(result) == ["precision_at_1", "precision_at_4", "precision_at_10", "map_at_all"]
    as_tensors = cross_domain_retrieval(*(torch.as_tensor(x) for x in args), ks=(1, 4, 10),
                                        knn=knn, batch_size=4)
    assert as_tensors == result
    assert list(cross_domain_retrieval(*args, ks=(1,), knn=knn, map_at_all=False)) == [
        "precision_at_1"]


def test_evaluate_domains_gives_every_ordered_pair_equal_to_direct_calls():
    embeddings, labels, domains = three_domains(1)
    names = ["art", "clipart", "real"]
    results = evaluate_domains(embeddings, labels, domains, domain_names=names, ks=(1, 5),
                               knn="torch")
    expected_keys = [f"{names[a]}->{names[b]}" for a in range(3) for b in range(3) if a != b]
    assert list(results) == expected_keys
    for a in range(3):
        for b in range(3):
            if a != b:
                qa, gb = domains == a, domains == b
                direct = cross_domain_retrieval(embeddings[qa], labels[qa], embeddings[gb],
                                                labels[gb], ks=(1, 5), knn="torch")
                assert results[f"{names[a]}->{names[b]}"] == direct
    chosen = evaluate_domains(torch.from_numpy(embeddings), torch.from_numpy(labels),
                              torch.from_numpy(domains), domain_names=names, ks=(1, 5),
                              knn="torch", directions=[("real", "art"), (0, 1)])
    assert chosen == {"real->art": results["real->art"], "art->clipart": results["art->clipart"]}
    unnamed = evaluate_domains(embeddings, labels, domains, ks=(1, 5), knn="torch")
    assert list(unnamed) == ["0->1", "0->2", "1->0", "1->2", "2->0", "2->1"]


def test_evaluate_domains_rejects_bad_directions_and_names():
    embeddings, labels, domains = three_domains(2)
    with pytest.raises(ValueError, match="unknown domain 'sketch'"):
        evaluate_domains(embeddings, labels, domains, directions=[("0", "sketch")])
    with pytest.raises(ValueError, match="query and gallery domains must differ"):
        evaluate_domains(embeddings, labels, domains, directions=[(1, 1)])
    with pytest.raises(ValueError, match="do not index domain_names"):
        evaluate_domains(embeddings, labels, domains, domain_names=["a", "b"])
    with pytest.raises(ValueError, match="one row per item"):
        evaluate_domains(embeddings, labels[:-1], domains)


def test_mean_metrics_averages_over_directions():
    results = {"a->b": {"precision_at_1": 10.0, "map_at_all": 4.0},
               "b->a": {"precision_at_1": 30.0, "map_at_all": 8.0},
               "a->c": {"precision_at_1": 50.0, "map_at_all": 0.0}}
    assert mean_metrics(results) == {"precision_at_1": 30.0, "map_at_all": 4.0}
    with pytest.raises(ValueError, match="has metrics"):
        mean_metrics({"a->b": {"precision_at_1": 1.0}, "b->a": {"map_at_all": 1.0}})
    with pytest.raises(ValueError, match="empty"):
        mean_metrics({})


def test_format_table_rows_columns_and_baseline():
    results = {"A->B": {"precision_at_1": 81.234, "map_at_all": 50.0},
               "B->A": {"precision_at_1": 90.0, "map_at_all": 60.5}}
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["direction", "P@1", "mAP@All"]
    assert lines[1].split() == ["A->B", "81.23", "50.00"]
    assert lines[3].split() == ["mean", "85.62", "55.25"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    baseline = {"A->B": {"precision_at_1": 20.0, "map_at_all": 10.0},
                "B->A": {"precision_at_1": 40.0, "map_at_all": 30.0}}
    lines = format_table(results, baseline=baseline, baseline_label="raw").splitlines()
    assert lines[0].split() == ["direction", "P@1", "P@1", "raw", "mAP@All", "mAP@All", "raw"]
    assert lines[2].split() == ["B->A", "90.00", "40.00", "60.50", "30.00"]
    assert lines[3].split() == ["mean", "85.62", "30.00", "55.25", "20.00"]
    partial = format_table(results, baseline={"A->B": baseline["A->B"]}).splitlines()
    assert partial[2].split() == ["B->A", "90.00", "-", "60.50", "-"]
    assert partial[3].split() == ["mean", "85.62", "-", "55.25", "-"]
