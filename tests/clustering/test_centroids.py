import math

import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.clustering import cluster_centroids, confident_mask


def brute_centroids(x, labels, c, normalize=True):
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros((c, x.shape[1]))
    for k in range(c):
        members = [x[i] / np.linalg.norm(x[i]) if normalize else x[i]
                   for i in range(len(x)) if labels[i] == k]
        if members:
            mean = np.mean(members, axis=0)
            out[k] = mean / np.linalg.norm(mean) if normalize else mean
    return out


def brute_mask(x, labels, domains, ratio):
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    keep = np.ones(len(x), dtype=bool)
    if ratio >= 1:
        return keep
    for d in set(domains.tolist()):
        for c in set(labels.tolist()):
            members = [i for i in range(len(x)) if labels[i] == c and domains[i] == d]
            if not members:
                continue
            centroid = x[members].mean(0)
            centroid /= np.linalg.norm(centroid)
            ranked = sorted(members, key=lambda i: -(x[i] @ centroid))
            for i in ranked[max(1, math.ceil(ratio * len(members))):]:
                keep[i] = False
    return keep


def data(n=90, e=7, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    labels[labels == 3] = 4  # cluster 3 is empty
    x = (rng.normal(size=(n, e)) + 2 * rng.normal(size=(c, e))[labels]).astype(np.float32)
    return x, labels, rng.integers(0, 3, n)


@pytest.mark.parametrize("normalize", [True, False])
def test_cluster_centroids_numpy_and_torch_match_a_loop(normalize):
    x, labels, _ = data()
    expected = brute_centroids(x, labels, 6, normalize)  # clusters 3 and 5 have no members
    got_np = cluster_centroids(x, labels, 6, normalize=normalize)
    got_t = cluster_centroids(torch.from_numpy(x), torch.from_numpy(labels), 6, normalize=normalize)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float32 and got_np.shape == (6, 7)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    assert np.allclose(got_np, expected, atol=1e-5) and np.allclose(got_t.numpy(), expected, atol=1e-5)
    assert (got_np[[3, 5]] == 0).all()
    if normalize:
        assert np.allclose(np.linalg.norm(got_np[[0, 1, 2, 4]], axis=1), 1, atol=1e-5)


def test_cluster_centroids_types_and_bad_labels():
    x, labels, _ = data()
    assert cluster_centroids(x.astype(np.float64), labels.tolist(), 5).dtype == np.float64
    assert cluster_centroids(torch.from_numpy(x).double(), labels, 5).dtype == torch.float64
    assert cluster_centroids(np.ones((3, 2), dtype=np.int64), [0, 0, 1], 2).dtype == np.float32
    with pytest.raises(ValueError, match="labels must be < num_clusters=4"):
        cluster_centroids(x, labels, 4)
    with pytest.raises(ValueError, match="non-negative"):
        cluster_centroids(x, labels - 1, 5)
    with pytest.raises(ValueError, match="labels must be"):
        cluster_centroids(x, labels[:-1], 5)
    with pytest.raises(ValueError, match="labels must be"):
        cluster_centroids(x, labels.astype(np.float32), 5)
    with pytest.raises(ValueError, match=r"features must be \(N, e\)"):
        cluster_centroids(x[0], labels, 5)


@pytest.mark.parametrize("ratio", [1e-3, 0.1, 0.25, 0.5, 0.7, 0.999, 1.0, 1.5])
def test_confident_mask_matches_a_loop(ratio):
    x, labels, domains = data()
    got = confident_mask(torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(domains), ratio)
    assert got.dtype == torch.bool and got.shape == (len(x),)
    expected = brute_mask(x, labels, domains, ratio)
    assert (got.numpy() == expected).all()
    if ratio >= 1:
        assert got.all()
    for d in range(3):
        for c in set(labels.tolist()):
            n = int(((labels == c) & (domains == d)).sum())
            kept = int(got[torch.from_numpy((labels == c) & (domains == d))].sum())
            assert kept == (n if ratio >= 1 else max(1, math.ceil(ratio * n)))


def test_confident_mask_small_ratio_keeps_the_closest_members_of_every_group():
    # domain 0: unit vectors at 0, 10, 20 and 80 degrees (mean direction about 27 degrees, so the
    # closest are 20 then 10); domain 1: one sample of the same cluster, always kept
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 80.0, 45.0]))
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [2.0], [3.0], [0.5], [1.0]])
    labels = torch.zeros(5, dtype=torch.long)
    domains = torch.tensor([0, 0, 0, 0, 1])
    assert confident_mask(x, labels, domains, 0.5).tolist() == [False, True, True, False, True]
    assert confident_mask(x, labels, domains, 0.51).tolist() == [True, True, True, False, True]
    assert confident_mask(x, labels, domains, 1e-9).tolist() == [False, False, True, False, True]
    assert confident_mask(x, labels, domains, 1.0).all()
    assert confident_mask(x[:0], labels[:0], domains[:0], 0.5).shape == (0,)


def test_confident_mask_bad_values():
    x, labels, domains = (torch.from_numpy(a) for a in data())
    for ratio in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="keep_ratio must be > 0"):
            confident_mask(x, labels, domains, ratio)
    with pytest.raises(ValueError, match="domains must be"):
        confident_mask(x, labels, domains[:-1], 0.5)
