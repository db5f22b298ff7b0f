import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import pseudo_label_scores


def test_perfect_labels_up_to_renaming():
    true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    domains = np.repeat([0, 1], 6)
    scores = pseudo_label_scores((true + 1) % 3, true, domains)
    assert set(scores) == {"nmi", "ari", "nmi_per_domain", "ari_per_domain"}
    assert scores["nmi"] == pytest.approx(1) and scores["ari"] == pytest.approx(1)
    assert scores["nmi_per_domain"] == pytest.approx([1, 1])


def test_cross_domain_inconsistency_lowers_only_the_global_scores():
    true = np.tile([0, 1, 2], 4)
    domains = np.repeat([0, 1], 6)
    labels = np.where(domains == 0, true, (true + 1) % 3)  # each domain perfect, ids not aligned
    scores = pseudo_label_scores(torch.from_numpy(labels), torch.from_numpy(true), domains.tolist())
    assert scores["nmi_per_domain"] == pytest.approx([1, 1])
    assert scores["ari_per_domain"] == pytest.approx([1, 1])
    assert scores["nmi"] < 0.5 and scores["ari"] < 0.5


def test_matches_sklearn():
    rng = np.random.default_rng(0)
    labels, true, domains = rng.integers(0, 4, 200), rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    scores = pseudo_label_scores(labels, true, domains)
    assert scores["nmi"] == normalized_mutual_info_score(true, labels)
    assert scores["ari"] == adjusted_rand_score(true, labels)
    for d in range(3):
        assert scores["nmi_per_domain"][d] == normalized_mutual_info_score(true[domains == d], labels[domains == d])
        assert scores["ari_per_domain"][d] == adjusted_rand_score(true[domains == d], labels[domains == d])
    assert all(isinstance(v, float) for v in [scores["nmi"], scores["ari"], *scores["nmi_per_domain"]])


def test_bad_shapes():
    with pytest.raises(ValueError, match="same length"):
        pseudo_label_scores([0, 1], [0, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="1-D"):
        pseudo_label_scores(np.zeros((2, 2)), [0, 1], [0, 0])


def test_relabel_precision_against_a_brute_force_mapping():
    import itertools

    from tpsnet_plugin.evaluation import relabel_precision

    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, size=60)
    before = (true + 1) % 3  # ids permuted: id (c+1)%3 means class c
    before[:12] = rng.integers(0, 3, size=12)  # some wrong
    after = before.copy()
    after[:20] = (true[:20] + 1) % 3  # re-paired to the right id
    after[20:25] = (true[20:25] + 2) % 3  # re-paired to a wrong id
    # brute force: the permutation of ids that agrees most with the classes
    best = max(itertools.permutations(range(3)), key=lambda p: sum(p[b] == t for b, t in zip(before, true)))
    changed = before != after
    right = changed & (np.array(best)[after] == true)
    result = relabel_precision(before, after, true)
    assert result["changed"] == changed.sum() and result["right"] == right.sum() > 0
    assert result["precision"] == pytest.approx(right.sum() / changed.sum())
    assert result["was_right"] == (changed & (np.array(best)[before] == true)).sum()
    assert result["accuracy_after"] == pytest.approx((np.array(best)[after] == true).mean())
    assert result["share"] == pytest.approx(changed.mean())
    unchanged = relabel_precision(before, before, true)
    assert unchanged["changed"] == 0 and unchanged["precision"] is None
