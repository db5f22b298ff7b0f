import itertools

import numpy as np
import pytest

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.clustering import (
    BaseAlignment,
    ConsensusAlignment,
    ReferenceAlignment,
    create_alignment,
    match_centroids,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def permuted_domains(num_domains=3, c=5, e=8, noise=0.05, seed=0):
    """Noisy copies of the same centroids, each domain in its own random id order."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(c, e)))
    orders = [np.arange(c)] + [rng.permutation(c) for _ in range(num_domains - 1)]
    raw = [unit(base[order] + noise * rng.normal(size=(c, e))).astype(np.float32) for order in orders]
    return base, raw, orders


def test_match_centroids_against_brute_force():
    rng = np.random.default_rng(0)
    raw, target = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    cos = unit(target) @ unit(raw).T
    best = max(itertools.permutations(range(5)), key=lambda p: sum(cos[p[r], r] for r in range(5)))
    perm, cosines = match_centroids(raw, target)
    assert perm.dtype == np.int64 and perm.tolist() == list(best)
    assert np.allclose(cosines, [cos[best[r], r] for r in range(5)])


def test_match_centroids_undoes_a_permutation():
    base, raw, orders = permuted_domains()
    for r, order in zip(raw, orders):
        perm, cosines = match_centroids(r, base)
        assert (perm == order).all() and cosines.min() > 0.95


@pytest.mark.parametrize("alignment", [ReferenceAlignment(), ConsensusAlignment()])
def test_cold_alignment_gives_domain_0_ids(alignment):
    base, raw, orders = permuted_domains()
    matching, cosines = alignment(raw)
    assert all((perm == order).all() for perm, order in zip(matching, orders))
    assert len(cosines) == (2 if isinstance(alignment, ReferenceAlignment) else 3)
    assert all(c.shape == (5,) and c.min() > 0.95 for c in cosines)


def test_reference_cosines_are_those_with_domain_0():
    _, raw, _ = permuted_domains()
    matching, cosines = ReferenceAlignment().align(raw)
    aligned = [unit(r)[np.argsort(p)] for r, p in zip(raw, matching)]
    for d in (1, 2):
        assert np.allclose(cosines[d - 1], (aligned[d] @ aligned[0].T)[matching[d], matching[d]], atol=1e-6)


@pytest.mark.parametrize("alignment", [ReferenceAlignment(), ConsensusAlignment()])
def test_warm_alignment_keeps_the_previous_ids(alignment):
    base, raw, orders = permuted_domains()
    relabel = np.array([3, 0, 4, 1, 2])  # previous id of each base centroid
    previous = np.stack([base[np.argsort(relabel)]] * 3)  # previous[d, relabel[k]] = base[k]
    matching, _ = alignment.align(raw, previous)
    assert all((perm == relabel[order]).all() for perm, order in zip(matching, orders))


def test_consensus_warm_start_outvotes_a_domain_with_other_previous_ids():
    # Domain 0 keeps its previous ids on its own but disagrees with domains 1-2, which agree with
    # each other: the consensus moves domain 0 onto the ids of the others.
    base, _, _ = permuted_domains(num_domains=3, noise=0.0)
    raw = [base.copy() for _ in range(3)]
    swap = np.array([1, 0, 2, 3, 4])
    previous = np.stack([base[swap], base, base])  # domain 0's previous ids 0 and 1 are swapped
    assert (match_centroids(raw[0], previous[0])[0] == swap).all()
    matching, cosines = ConsensusAlignment().align(raw, previous)
    assert all((perm == np.arange(5)).all() for perm in matching)
    assert all(np.allclose(c, 1) for c in cosines)


def test_consensus_warm_start_relabels_the_domains_together():
    # Noisy centroids where the consensus, started from each domain's own previous ids, settles
    # on ids that keep the previous ones less well than a shared relabelling of all domains.
    rng = np.random.default_rng(2)
    c, e = 4, 6
    base = unit(rng.normal(size=(c, e)))
    raw = [unit(base + 0.3 * rng.normal(size=(c, e))) for _ in range(3)]
    previous = np.stack([
        unit(base[rng.permutation(c)] if rng.random() < 0.4 else base + 0.3 * rng.normal(size=(c, e)))
        for _ in range(3)
    ])
    alignment = ConsensusAlignment()
    refined, _ = alignment.refine(raw, [match_centroids(r, p)[0] for r, p in zip(raw, previous)])
    matching, _ = alignment.align(raw, previous)

    def kept_similarity(perms):  # summed cosine of every aligned centroid with its previous one
        return sum(float(np.sum(unit(prev) * unit(r)[np.argsort(p)])) for prev, r, p in zip(previous, raw, perms))

    relabel = matching[0][np.argsort(refined[0])]  # refined id -> final id
    assert (relabel != np.arange(c)).any(), "the data does not exercise the relabelling"
    assert all((m == relabel[r]).all() for m, r in zip(matching, refined))  # one shared relabelling
    best = max(itertools.permutations(range(c)), key=lambda q: kept_similarity([np.array(q)[r] for r in refined]))
    assert (relabel == np.array(best)).all()
    assert kept_similarity(matching) > kept_similarity(refined)


def test_consensus_refine_converges_and_stops_after_max_rounds(monkeypatch):
    import tpsnet_plugin.clustering.alignment as module

    _, raw, orders = permuted_domains(num_domains=4, noise=0.1, seed=3)
    start = [np.arange(5)] * 4  # wrong for domains 1-3
    calls = []
    monkeypatch.setattr(module, "match_centroids", lambda *a: calls.append(1) or match_centroids(*a))
    matching, cosines = ConsensusAlignment().refine(raw, start)
    # every domain ends on the same ids: one permutation shared by all domains maps back to `orders`
    shared = matching[0][np.argsort(orders[0])]
    assert all((m == shared[o]).all() for m, o in zip(matching, orders))
    assert all(c.min() > 0.9 for c in cosines)
    rounds = len(calls) // 4
    assert len(calls) % 4 == 0 and 2 <= rounds < 10  # a last round without change ends it
    calls.clear()
    ConsensusAlignment(max_rounds=1).refine(raw, start)
    assert len(calls) == 4
    assert all((s == np.arange(5)).all() for s in start)  # the start is not modified in place


def test_one_domain():
    _, raw, _ = permuted_domains(num_domains=1)
    for alignment in (ReferenceAlignment(), ConsensusAlignment()):
        matching, cosines = alignment.align(raw)
        assert (matching[0] == np.arange(5)).all() and cosines == []
        matching, cosines = alignment.align(raw, np.stack(raw)[:, ::-1])
        assert (matching[0] == np.arange(5)[::-1]).all() and cosines == []


def test_create_alignment():
    assert type(create_alignment("reference")) is ReferenceAlignment
    consensus = create_alignment("consensus")
    assert type(consensus) is ConsensusAlignment and consensus.max_rounds == 10
    assert isinstance(consensus, BaseAlignment) and repr(consensus) == "ConsensusAlignment(max_rounds=10)"
    with pytest.raises(ValueError, match="alignment must be 'consensus' or 'reference'"):
        create_alignment("pairwise")
    with pytest.raises(ValueError, match="max_rounds"):
        ConsensusAlignment(max_rounds=0)
