import math

import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import average_precision, average_precisions
from tpsnet_plugin.evaluation.average_precision import (
    _rank_key_shift,
    _rank_keys,
    precision_sums_by_counting,
    precision_sums_by_sorting,
    relevant_counts,
)

from ..references import ranked_relevance, ref_ap, ref_voc_ap


def brute_force_aps(query, gallery, query_labels, gallery_labels, ap_fn):
    """Per-query AP of the ranking by (-inner product, index); NaN without a relevant item."""
    sims = (query.double() @ gallery.double().T).tolist()
    labels = gallery_labels.tolist()
    return [ap_fn(ranked_relevance(row, label, labels)) if label in labels else math.nan
            for row, label in zip(sims, query_labels.tolist())]


def integer_case(seed, n=50, m=80, d=5, classes=5):
    """Small integer vectors (exact inner products, many ties); class 9 is absent from the gallery."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randint(-2, 3, (n, d), generator=generator).float()
    gallery = torch.randint(-2, 3, (m, d), generator=generator).float()
    query_labels = torch.randint(0, classes, (n,), generator=generator)
    query_labels[::7] = 9
    return query, gallery, query_labels, torch.randint(0, classes, (m,), generator=generator)


def random_case(seed, n=40, m=90, d=8, classes=4):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=generator), torch.randn(m, d, generator=generator),
            torch.randint(0, classes, (n,), generator=generator),
            torch.randint(0, classes, (m,), generator=generator))


def assert_matches(values, expected, rtol):
    np.testing.assert_allclose(values.numpy(), np.array(expected), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("make_case", [integer_case, random_case])
@pytest.mark.parametrize("batch_size", [3, 1000])
def test_per_query_ap_and_voc_ap_match_brute_force(make_case, batch_size):
    case = make_case(batch_size)
    ap = brute_force_aps(*case, ref_ap)
    voc_ap = brute_force_aps(*case, ref_voc_ap)
    counting = average_precisions(*case, batch_size=batch_size)  # rank counting
    assert list(counting) == ["ap"] and counting["ap"].dtype == torch.float64
    assert_matches(counting["ap"], ap, rtol=1e-12)  # float64 throughout
    sorting = average_precisions(*case, voc=True, batch_size=batch_size)  # one sort per row
    assert list(sorting) == ["ap", "voc_ap"]
    # float32 precisions, summed in float64
    assert_matches(sorting["ap"], ap, rtol=1e-6)
    assert_matches(sorting["voc_ap"], voc_ap, rtol=1e-6)
    assert (sorting["voc_ap"].nan_to_num() >= sorting["ap"].nan_to_num()).all()


def test_ties_are_ranked_by_gallery_index():
    # The query ties with gallery items 0 and 1; whichever comes first decides the AP.
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for labels, expected in (([1, 0, 0], (1 / 2 + 2 / 3) / 2), ([0, 1, 0], (1 + 2 / 3) / 2)):
        for voc in (False, True):
            ap = average_precisions(query, gallery, torch.tensor([0]), torch.tensor(labels), voc=voc)
            assert ap["ap"].item() == pytest.approx(expected, abs=1e-6)


def test_vectors_are_not_normalised():
    # By cosine item 0 (parallel to the query) ranks first; by inner product item 1 does.
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    for voc in (False, True):
        ap = average_precisions(query, gallery, torch.tensor([0]), torch.tensor([0, 1]), voc=voc)
        assert ap["ap"].item() == pytest.approx(1 / 2)


def test_counting_and_sorting_give_the_same_sums_and_the_fallback_sorts(monkeypatch):
    case = integer_case(11)
    counting = precision_sums_by_counting(*case, batch_size=4)
    sorting = precision_sums_by_sorting(*case, batch_size=4)["ap"]
    torch.testing.assert_close(counting, sorting, rtol=1e-6, atol=1e-6)
    assert (counting[case[2] == 9] == 0).all()
    # galleries too large for the rank keys are sorted instead
    monkeypatch.setattr(average_precision, "_rank_key_shift", lambda size: None)
    assert torch.equal(precision_sums_by_counting(*case, batch_size=4), sorting)
    assert not torch.equal(counting, sorting)  # so the line above did take the fallback


def test_relevant_counts_match_a_loop():
    _, _, query_labels, gallery_labels = integer_case(12)
    expected = [sum(int(g == q) for g in gallery_labels.tolist()) for q in query_labels.tolist()]
    assert relevant_counts(query_labels, gallery_labels).tolist() == expected
    assert relevant_counts(torch.tensor([5, -1]), torch.tensor([3, 3])).tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rank_keys_order_like_the_stable_descending_sort(dtype):
    # Exact ties, zeros of both signs, powers of two and their float neighbours (where the gap to
    # the next lower value halves), denormal-sized values and extremes, repeated across the row.
    special = torch.tensor([1.0, 0.5, 0.25, -0.5, -1.0, 0.0, -0.0, 1e-30, -1e-30, 0.3, 0.3], dtype=dtype)
    neighbours = torch.cat([torch.nextafter(special, torch.full_like(special, 2.0)),
                            torch.nextafter(special, torch.full_like(special, -2.0))])
    values = torch.cat([special, neighbours, torch.rand(200, dtype=torch.float32).to(dtype) * 2 - 1])
    row = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))].repeat(3)
    index = torch.arange(len(row))
    keys = _rank_keys(row[None], index, _rank_key_shift(len(row)))[0]
    assert len(torch.unique(keys)) == len(row)
    expected = row.float().sort(descending=True, stable=True).indices
    assert torch.equal(keys.sort(descending=True).indices, expected)


def test_rank_key_shift_limits():
    assert _rank_key_shift(1) == 2 and _rank_key_shift(4) == 4 and _rank_key_shift(5) == 5
    assert _rank_key_shift(2**26) == 28 and _rank_key_shift(2**26 + 1) is None


def many_ties_case(seed):
    """Similarities from a handful of values: long runs of exact ties inside every bucket."""
    query, gallery, query_labels, gallery_labels = integer_case(seed, n=30, m=2000, d=2)
    return query, gallery, query_labels.clamp(max=4), gallery_labels


@pytest.mark.parametrize("make_case", [
    lambda seed: random_case(seed, n=20, m=3000, d=16, classes=30),  # most columns in empty buckets
    lambda seed: random_case(seed, n=20, m=500, d=3, classes=2),  # many relevant items per bucket
    many_ties_case,
    lambda seed: (torch.ones(4, 3), torch.ones(50, 3), torch.tensor([0, 1, 0, 2]),
                  torch.arange(50) % 3),  # one similarity value: a single bucket
])
def test_non_relevant_counts_match_a_binary_search_of_the_rank_keys(make_case):
    query, gallery, query_labels, gallery_labels = make_case(13)
    shift = _rank_key_shift(len(gallery))
    index = torch.arange(len(gallery))
    exercised_buckets = False
    for label in torch.unique(query_labels):
        relevant = torch.nonzero(gallery_labels == label).flatten()
        if len(relevant) == 0:
            continue
        similarities = query[query_labels == label] @ gallery.T
        counts = average_precision._non_relevant_counts(similarities, relevant, shift)
        keys = _rank_keys(similarities, index, shift)
        below = torch.searchsorted(keys[:, relevant].sort(dim=1).values, keys)
        others = below[:, gallery_labels != label]
        expected = torch.stack([torch.bincount(row, minlength=len(relevant) + 1) for row in others])
        assert torch.equal(counts, expected)
        exercised_buckets |= bool((others > 0).any())
    assert exercised_buckets


@pytest.mark.parametrize("make_case", [integer_case, random_case, many_ties_case])
def test_ranking_statistics_hits_match_the_brute_force_ranking(make_case):
    query, gallery, query_labels, gallery_labels = make_case(14)
    ks = (1, 2, 5, 30, 10_000)
    hits = average_precision.ranking_statistics(query, gallery, query_labels, gallery_labels,
                                                ks=ks, batch_size=6)["hits"]
    sims = (query.double() @ gallery.double().T).tolist()
    labels = gallery_labels.tolist()
    for row, (sim_row, label) in enumerate(zip(sims, query_labels.tolist())):
        relevance = ranked_relevance(sim_row, label, labels)
        num_relevant = sum(relevance)
        assert hits[row].tolist() == [sum(relevance[:min(k, num_relevant)]) for k in ks]


def test_average_precisions_returns_hits_only_when_it_counts_ranks():
    query, gallery, query_labels, gallery_labels = random_case(3)
    ks = (1, 5)
    counted = average_precisions(query, gallery, query_labels, gallery_labels, ks=ks, batch_size=7)
    expected = average_precision.ranking_statistics(query, gallery, query_labels, gallery_labels, ks=ks)
    assert torch.equal(counted["hits"], expected["hits"])
    assert "hits" not in average_precisions(query, gallery, query_labels, gallery_labels)
    # the VOC AP sorts every row instead, so there are no counted ranks to give P@k
    assert set(average_precisions(query, gallery, query_labels, gallery_labels, voc=True, ks=ks)) == {"ap", "voc_ap"}


def test_counts_ranks_chooses_counting_unless_voc_or_a_gallery_too_large_for_rank_keys():
    assert average_precision.counts_ranks(1000)
    assert not average_precision.counts_ranks(1000, voc=True)
    assert average_precision.counts_ranks(2**26)
    assert not average_precision.counts_ranks(2**26 + 1)
