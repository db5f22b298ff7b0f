"""Planted multi-domain data shared by the clustering tests."""

import numpy as np

C, E = 6, 16


def make_domains(seed=0, counts=(60, 90, 120), noise=0.1):
    """Orthonormal class means, per-domain random offset, samples shuffled per domain."""
    rng = np.random.default_rng(seed)
    means = np.linalg.qr(rng.normal(size=(E, C)))[0].T
    xs, ds, ys = [], [], []
    for d, n in enumerate(counts):
        y = rng.permutation(np.arange(n) % C)
        offset = rng.normal(size=E)
        xs.append(means[y] + noise * rng.normal(size=(n, E)) + offset)
        ds.append(np.full(n, d))
        ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ds), np.concatenate(ys)


def make_ambiguous_reference(eps=0.15, noise=0.05, n=120, seed=0):
    """Four domains; in domain 0 classes 0 and 1 have centroids equally close to both classes'
    centroids elsewhere, and domains 1-3 are tilted so that each breaks that tie its own way."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(E, C + 2)))[0].T
    means, (u0, u1) = basis[:C], basis[C:]
    xs, ds, ys = [], [], []
    for d in range(4):
        y = rng.permutation(np.arange(n) % C)
        m = means.copy()
        if d == 0:
            middle = (means[0] + means[1]) / np.sqrt(2)
            m[0], m[1] = middle + 0.5 * u0, middle + 0.5 * u1
        else:
            tilt = (1 if d % 2 else -1) * eps * (u0 - u1)
            m[0], m[1] = means[0] + tilt, means[1] - tilt
        xs.append(m[y] + noise * rng.normal(size=(n, E)))
        ds.append(np.full(n, d))
        ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ds), np.concatenate(ys)


def class_to_id(labels, domains, true_labels):
    """Per domain, the aligned id of each true class; asserts each class maps to one id."""
    mapping = []
    for d in np.unique(domains):
        row = []
        for c in range(C):
            ids = np.unique(labels[(domains == d) & (true_labels == c)])
            assert len(ids) == 1, f"class {c} split over ids {ids} in domain {d}"
            row.append(int(ids[0]))
        mapping.append(row)
    return np.array(mapping)


def check_result(result, x_domains, true_labels):
    """Checks a ClusterResult on planted data; returns the class -> aligned id mapping per domain."""
    from tpsnet_plugin.clustering import ClusterResult

    num_domains = len(np.unique(x_domains))
    assert isinstance(result, ClusterResult)
    assert result.labels.dtype == np.int64 and result.labels.shape == true_labels.shape
    assert result.centroids.dtype == np.float32 and result.centroids.shape == (num_domains, C, E)
    mapping = class_to_id(result.labels, x_domains, true_labels)
    # Cross-domain alignment: every domain maps each true class to the same aligned id.
    assert (mapping == mapping[0]).all() and sorted(mapping[0]) == list(range(C))
    for perm in result.matching:
        assert sorted(perm.tolist()) == list(range(C))
    expected_sizes = np.stack([np.bincount(result.labels[x_domains == d], minlength=C)
                               for d in range(num_domains)])
    assert (result.cluster_sizes == expected_sizes).all()
    return mapping


def centred(x, domains):
    """The labeler's input transform: normalise, subtract each domain's mean, normalise."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for d in np.unique(domains):
        x[domains == d] -= x[domains == d].mean(0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
