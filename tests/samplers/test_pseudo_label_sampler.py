import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.samplers import PseudoLabelSampler


def make_labels(cluster_domain_counts, seed=0):
    """Shuffled dataset from {cluster: [count in domain 0, count in domain 1, ...]}."""
    labels, domains = [], []
    for cluster, counts in cluster_domain_counts.items():
        for d, n in enumerate(counts):
            labels += [cluster] * n
            domains += [d] * n
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.array(labels)[order], np.array(domains)[order]


def groups_of(batch, m):
    return [batch[i : i + m] for i in range(0, len(batch), m)]


UNEVEN = {0: [8, 24], 1: [12, 12], 2: [3, 0], 3: [1, 1], 4: [20, 9], 5: [7, 13], 6: [0, 30]}


def expected_num_batches(labels, batch_size, m):
    return math.ceil(sum(math.ceil(n / m) for n in Counter(labels.tolist()).values())
                     / (batch_size // m))


def test_batch_structure_and_distinct_clusters():
    labels, domains = make_labels(UNEVEN)
    batch_size, m = 16, 4
    sampler = PseudoLabelSampler(labels, domains, batch_size=batch_size, m=m)
    batches = list(sampler)
    assert len(batches) == len(sampler) == expected_num_batches(labels, batch_size, m)
    groups_left = {k: math.ceil(n / m) for k, n in Counter(labels.tolist()).items()}
    for b, batch in enumerate(batches):
        assert len(batch) == batch_size and all(isinstance(i, int) for i in batch)
        clusters = []
        for group in groups_of(batch, m):
            assert len({labels[i] for i in group}) == 1
            clusters.append(int(labels[group[0]]))
        if b < len(batches) - 1:
            # Distinct clusters as far as the clusters with groups left allow.
            available = sum(1 for n in groups_left.values() if n > 0)
            assert len(set(clusters)) == min(batch_size // m, available)
            for k in clusters:
                groups_left[k] -= 1
                assert groups_left[k] >= 0


def test_fewer_clusters_than_a_batch_needs():
    labels, domains = make_labels({0: [10, 10], 1: [6, 9]})
    batches = list(PseudoLabelSampler(labels, domains, batch_size=32, m=4))
    assert all(len(b) == 32 for b in batches)
    assert set().union(*batches) == set(range(len(labels)))


def test_domain_balance_within_groups():
    m = 4
    # Equal domain counts: the domains alternate exactly.
    labels, domains = make_labels({k: [12, 12] for k in range(5)})
    for batch in PseudoLabelSampler(labels, domains, batch_size=8, m=m, seed=1):
        for group in groups_of(batch, m):
            assert Counter(domains[group].tolist()) == {0: 2, 1: 2}
    labels, domains = make_labels({k: [9, 9, 9] for k in range(4)})
    for batch in PseudoLabelSampler(labels, domains, batch_size=8, m=m, seed=1):
        for group in groups_of(batch, m):
            counts = Counter(domains[group].tolist())
            assert len(counts) == 3 and set(counts.values()) <= {1, 2}
    # Uneven counts: each group follows the cluster's domain proportions within one sample.
    labels, domains = make_labels(UNEVEN)
    for batch in PseudoLabelSampler(labels, domains, batch_size=8, m=m, seed=2):
        for group in groups_of(batch, m):
            members = labels == labels[group[0]]
            counts = np.bincount(domains[group], minlength=2)
            share = m * np.bincount(domains[members], minlength=2) / members.sum()
            assert (np.abs(counts - share) < 1 + 1e-9).all(), (group, counts, share)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_sample_each_epoch(epoch):
    labels, domains = make_labels(UNEVEN)
    sampler = PseudoLabelSampler(labels, domains, batch_size=12, m=3, seed=4)
    sampler.set_epoch(epoch)
    seen = [i for batch in sampler for i in batch]
    assert set(seen) == set(range(len(labels)))
    # Cluster 3 has 2 members < m: its group repeats them.
    group = next(g for b in sampler for g in groups_of(b, 3) if labels[g[0]] == 3)
    assert sorted(set(group)) == sorted(np.flatnonzero(labels == 3).tolist())


def test_determinism_and_epochs():
    labels, domains = make_labels(UNEVEN)
    a = PseudoLabelSampler(labels, domains, batch_size=8, m=2, seed=7)
    b = PseudoLabelSampler(labels, domains, batch_size=8, m=2, seed=7)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PseudoLabelSampler(labels, domains, batch_size=8, m=2, seed=8)) != list(
        PseudoLabelSampler(labels, domains, batch_size=8, m=2, seed=7))


def test_set_labels_changes_next_epoch():
    labels, domains = make_labels({k: [6, 6] for k in range(4)})
    sampler = PseudoLabelSampler(labels, domains, batch_size=8, m=4)
    before = list(sampler)
    new_labels = np.arange(len(labels)) % 6  # 6 clusters of 4
    sampler.set_labels(new_labels)
    after = list(sampler)
    assert after != before
    assert len(sampler) == len(after) == expected_num_batches(new_labels, 8, 4)
    for batch in after:
        for group in groups_of(batch, 4):
            assert len({new_labels[i] for i in group}) == 1
    new_domains = 1 - domains
    sampler.set_labels(torch.from_numpy(new_labels), torch.from_numpy(new_domains))
    assert (sampler.domains == new_domains).all()
    with pytest.raises(ValueError, match="equal length"):
        sampler.set_labels(new_labels[:-1])


@pytest.mark.parametrize("clusters", [{k: [8, 8] for k in range(4)}, UNEVEN])
def test_two_ranks_split_batches(clusters):
    labels, domains = make_labels(clusters)
    kwargs = dict(batch_size=8, m=4, seed=3)
    everything = list(PseudoLabelSampler(labels, domains, num_replicas=1, rank=0, **kwargs))
    ranks = [list(PseudoLabelSampler(labels, domains, num_replicas=2, rank=r, **kwargs))
             for r in (0, 1)]
    per_rank = math.ceil(len(everything) / 2)
    assert [len(r) for r in ranks] == [per_rank, per_rank]
    assert len(PseudoLabelSampler(labels, domains, num_replicas=2, rank=1, **kwargs)) == per_rank
    padded = everything + everything[: 2 * per_rank - len(everything)]
    assert ranks[0] == padded[0::2] and ranks[1] == padded[1::2]
    if len(everything) % 2 == 0:
        assert not {tuple(b) for b in ranks[0]} & {tuple(b) for b in ranks[1]}
    covered = {i for r in ranks for b in r for i in b}
    assert covered == set(range(len(labels)))


def test_even_split_case_is_exercised():
    labels, domains = make_labels({k: [8, 8] for k in range(4)})
    assert len(PseudoLabelSampler(labels, domains, batch_size=8, m=4)) % 2 == 0
    labels, domains = make_labels(UNEVEN)
    assert len(PseudoLabelSampler(labels, domains, batch_size=8, m=4)) % 2 == 1


def test_as_dataloader_batch_sampler():
    labels, domains = make_labels(UNEVEN)
    data = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    dataset = TensorDataset(data, torch.from_numpy(labels), torch.from_numpy(domains))
    sampler = PseudoLabelSampler(torch.from_numpy(labels), torch.from_numpy(domains),
                                 batch_size=8, m=4)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == len(sampler)
    for (x, y, d), indices in zip(loader, sampler):
        assert x.squeeze(1).long().tolist() == indices
        assert y.tolist() == labels[indices].tolist() and d.tolist() == domains[indices].tolist()


def test_bad_arguments():
    labels, domains = make_labels({0: [4, 4]})
    with pytest.raises(ValueError, match="multiple of m"):
        PseudoLabelSampler(labels, domains, batch_size=10, m=4)
    with pytest.raises(ValueError, match="rank"):
        PseudoLabelSampler(labels, domains, batch_size=8, m=4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="ints"):
        PseudoLabelSampler(labels.astype(float), domains, batch_size=8, m=4)
    sampler = PseudoLabelSampler(labels, domains, batch_size=8, m=4)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)  # torch.distributed not initialised


def cluster_sequence(sampler, labels, m):
    """Cluster of every group of every batch of the current epoch, in order."""
    return [[int(labels[group[0]]) for group in groups_of(batch, m)] for batch in sampler]


def test_clusters_are_drawn_in_proportion_to_their_groups_left():
    # One big cluster (24 groups of m = 2) and four small ones (2 groups each). Drawing one group
    # per batch in proportion to the groups left is drawing a uniformly random remaining group:
    # at every position of the epoch the big cluster has probability 24 / 32. Drawing clusters
    # uniformly would give it 1 / 5 early in the epoch and all of the end.
    m, sizes = 2, {0: 48, 1: 4, 2: 4, 3: 4, 4: 4}
    labels, domains = make_labels({k: [n // 2, n - n // 2] for k, n in sizes.items()}, seed=3)
    groups = {k: n // m for k, n in sizes.items()}
    total = sum(groups.values())
    sampler = PseudoLabelSampler(labels, domains, batch_size=m, m=m, seed=5)
    epochs = 300
    counts = np.zeros((total, len(sizes)))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        sequence = cluster_sequence(sampler, labels, m)
        assert len(sequence) == total
        for position, (cluster,) in enumerate(sequence):
            counts[position, cluster] += 1
    expected = np.array([groups[k] / total for k in sorted(groups)])
    quarter = total // 4
    for window in (slice(0, quarter), slice(total - quarter, total)):
        frequency = counts[window].sum(0) / counts[window].sum()
        np.testing.assert_allclose(frequency, expected, atol=0.04)

    # Several clusters per batch: successive draws without replacement, each in proportion to the
    # groups left of the clusters not yet in the batch. Exact inclusion probability of each
    # cluster in the first batch of an epoch, from every ordered pair of draws:
    p = expected
    inclusion = [p[k] + sum(p[j] * p[k] / (1 - p[j]) for j in range(len(p)) if j != k)
                 for k in range(len(p))]
    sampler = PseudoLabelSampler(labels, domains, batch_size=2 * m, m=m, seed=6)
    first = np.zeros(len(sizes))
    epochs = 1000
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        first_batch = cluster_sequence(sampler, labels, m)[0]
        assert len(set(first_batch)) == 2
        first[first_batch] += 1
    np.testing.assert_allclose(first / epochs, inclusion, atol=0.05)
