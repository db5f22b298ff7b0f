import io
import sys

import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.samplers import ClusterPseudoLabeler, ClusterResult

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


@pytest.mark.parametrize("anchor", [None, "smallest", 1])
def test_ids_are_aligned_across_domains(anchor):
    x, d, y = make_domains()
    result = ClusterPseudoLabeler(C, anchor=anchor).fit(torch.from_numpy(x), d, true_labels=y)
    check_result(result, d, y)
    assert result.nmi > 0.99 and result.ari > 0.99
    assert len(result.nmi_per_domain) == len(result.ari_per_domain) == 3
    assert min(result.nmi_per_domain) > 0.99
    assert result.ids_changed is None
    # matching_cost = 1 - mean cosine of each domain's aligned centroids with the normalised mean
    # of the other domains' (the consensus alignment's target).
    cent = result.centroids / np.linalg.norm(result.centroids, axis=2, keepdims=True)
    cosines = []
    for k in range(3):
        others = np.delete(cent, k, axis=0).mean(axis=0)
        cosines += [cent[k, c] @ others[c] / np.linalg.norm(others[c]) for c in range(C)]
    assert result.matching_cost == pytest.approx(1 - np.mean(cosines), abs=1e-5)
    reference = ClusterPseudoLabeler(C, anchor=anchor, alignment="reference").fit(x, d, true_labels=y)
    cosines = [cent[k, c] @ cent[0, c] for k in (1, 2) for c in range(C)]  # domains 1.. vs domain 0
    assert (reference.labels == result.labels).all()
    assert reference.matching_cost == pytest.approx(1 - np.mean(cosines), abs=1e-5)
    assert 0 <= result.matching_cost < 0.2
    # Spherical k-means on centred, normalised features: unit centroids.
    assert np.allclose(np.linalg.norm(result.centroids, axis=2), 1, atol=1e-4)


def test_independent_clusterings_need_the_matching():
    # Without anchoring the raw k-means ids differ per domain, so the alignment above is the
    # Hungarian matching's doing (not an accident of identical initialisations).
    x, d, y = make_domains()
    result = ClusterPseudoLabeler(C, anchor=None).fit(x, d, true_labels=y)
    assert any((perm != np.arange(C)).any() for perm in result.matching[1:])
    check_result(result, d, y)


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


@pytest.mark.parametrize("anchor", [None, "smallest", 1])
def test_consensus_alignment_outvotes_a_domain_with_ambiguous_clusters(anchor):
    x, d, y = make_ambiguous_reference()
    reference = ClusterPseudoLabeler(C, anchor=anchor, alignment="reference").fit(x, d, true_labels=y)
    # matched to domain 0 alone, domains 1-3 disagree on classes 0 and 1 (what the test exercises)
    with pytest.raises(AssertionError):
        check_result(reference, d, y)
    assert min(reference.nmi_per_domain) > 0.99 and reference.nmi < 0.95
    consensus = ClusterPseudoLabeler(C, anchor=anchor).fit(x, d, true_labels=y)
    check_result(consensus, d, y)
    assert consensus.nmi > 0.99


def test_consensus_keeps_warm_started_ids():
    x, d, y = make_ambiguous_reference()
    labeler = ClusterPseudoLabeler(C)
    first = check_result(labeler.fit(x, d, y), d, y)
    labeler.seed = 3
    rng = np.random.default_rng(1)
    second = labeler.fit(x + 0.01 * rng.normal(size=x.shape).astype(np.float32), d, y)
    assert second.ids_changed == 0 and (check_result(second, d, y) == first).all()


@pytest.mark.parametrize("warm", [False, True])
def test_two_domains_consensus_equals_the_pairwise_matching(warm):
    # noisy clusters, so the matching has real choices to make
    x, d, y = make_domains(counts=(60, 90), noise=0.4)
    consensus, reference = ClusterPseudoLabeler(C), ClusterPseudoLabeler(C, alignment="reference")
    if warm:
        consensus.fit(x[::-1].copy(), d)  # a different first fit: the second one warm-starts from it
        reference.fit(x[::-1].copy(), d)
    a, b = consensus.fit(x, d, y), reference.fit(x, d, y)
    assert a.nmi < 0.99  # the data is not trivially separable
    if warm:
        # same partition; the ids may differ by one permutation shared by both domains (after a
        # warm start the consensus relabels the domains together to keep the previous ids)
        assert len(set(zip(a.labels.tolist(), b.labels.tolist()))) == C
    else:
        assert (a.labels == b.labels).all()


def test_alignment_must_be_known():
    with pytest.raises(ValueError, match="alignment must be 'consensus' or 'reference'"):
        ClusterPseudoLabeler(C, alignment="pairwise")


def test_no_true_labels_no_diagnostics():
    x, d, _ = make_domains()
    result = ClusterPseudoLabeler(C).fit(x, d)
    assert result.nmi is result.ari is result.nmi_per_domain is result.ari_per_domain is None


def test_warm_start_keeps_ids_stable():
    x, d, y = make_domains()
    rng = np.random.default_rng(1)
    x2 = x + 0.02 * rng.normal(size=x.shape).astype(np.float32)
    labeler = ClusterPseudoLabeler(C)
    first = check_result(labeler.fit(x, d, y), d, y)
    # Another seed would give other raw ids: warm start must still keep the previous ids.
    labeler.seed = 3
    second = labeler.fit(x2, d, y)
    assert second.ids_changed == 0
    assert (check_result(second, d, y) == first).all()
    cold = check_result(ClusterPseudoLabeler(C, seed=3).fit(x2, d, y), d, y)
    assert (cold != first).any(), "test data does not exercise the warm start"


def test_ids_changed_counts_relabelled_samples():
    x, d, y = make_domains()
    labeler = ClusterPseudoLabeler(C)
    first = labeler.fit(x, d)
    # Swap the features of two samples of different classes in domain 0.
    i, j = 0, int(np.flatnonzero((d == 0) & (y != y[0]))[0])
    x2 = x.copy()
    x2[[i, j]] = x2[[j, i]]
    second = labeler.fit(x2, d)
    assert second.ids_changed == int((first.labels != second.labels).sum()) == 2


def test_non_spherical_and_uncentred_options_run():
    x, d, y = make_domains(counts=(60, 60))
    x -= np.repeat(x.reshape(2, 60, E).mean(1), 60, axis=0)  # centre here instead
    result = ClusterPseudoLabeler(C, spherical=False, center_per_domain=False).fit(x, d, y)
    check_result(result, d, y)


def test_bad_inputs_raise():
    x, d, _ = make_domains(counts=(60, 4))
    with pytest.raises(ValueError, match="domain 1 has 4 images, fewer than num_clusters=6"):
        ClusterPseudoLabeler(C).fit(x, d)
    with pytest.raises(ValueError, match="anchor domain 5"):
        ClusterPseudoLabeler(C, anchor=5).fit(*make_domains()[:2])
    with pytest.raises(ValueError, match="anchor"):
        ClusterPseudoLabeler(C, anchor="largest")
    x, d, y = make_domains()
    with pytest.raises(ValueError, match="true_labels"):
        ClusterPseudoLabeler(C).fit(x, d, true_labels=y[:-1])
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClusterPseudoLabeler(C).fit(x, d)


def test_warm_start_follows_the_labels_into_a_moved_feature_space():
    # Training moves the feature space between fits (here: a random rotation and a projection to
    # another width); the warm start recomputes the previous clusters' centroids in the new
    # features, so the same partition keeps the same ids.
    x, d, y = make_domains()
    labeler = ClusterPseudoLabeler(C)
    first = labeler.fit(x, d, y)
    check_result(first, d, y)
    rotation, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(E, E)))
    rotated = labeler.fit((x @ rotation).astype(np.float32), d, y)
    assert rotated.ids_changed == 0 and (rotated.labels == first.labels).all()
    wider = np.concatenate([x, np.zeros((len(x), 4), np.float32)], axis=1) @ np.eye(E + 4)[::-1]
    widened = labeler.fit(wider.astype(np.float32), d, y)
    assert widened.ids_changed == 0 and (widened.labels == first.labels).all()


def test_warm_start_shape_mismatch_asks_for_reset():
    # other samples (no previous labels for them) and another width: nothing to start from
    x, d, _ = make_domains()
    labeler = ClusterPseudoLabeler(C)
    labeler.fit(x, d)
    keep = np.flatnonzero(np.arange(len(d)) % 5 != 0)
    with pytest.raises(ValueError, match="reset"):
        labeler.fit(x[keep, :8], d[keep])
    labeler.reset()
    assert labeler.fit(x[keep, :8], d[keep]).ids_changed is None


def test_sklearn_fallback_aligns_ids(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.warns(UserWarning, match="faiss is not installed"):
        labeler = ClusterPseudoLabeler(C, nredo=2)
    assert not labeler.use_faiss
    x, d, y = make_domains()
    first = check_result(labeler.fit(x, d, y), d, y)
    second = labeler.fit(x + 0.01, d, y)
    assert second.ids_changed == 0 and (check_result(second, d, y) == first).all()
    assert np.allclose(np.linalg.norm(second.centroids, axis=2), 1, atol=1e-4)


def test_state_dict_round_trip():
    x, d, y = make_domains()
    x2 = x + 0.02 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    original = ClusterPseudoLabeler(C)
    original.fit(x, d)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = ClusterPseudoLabeler(C)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    expected, got = original.fit(x2, d), resumed.fit(x2, d)
    assert got.ids_changed == expected.ids_changed == 0
    assert (got.labels == expected.labels).all()
    assert np.array_equal(got.centroids, expected.centroids)
    with pytest.raises(KeyError):
        resumed.load_state_dict({"centroids": None})
    fresh = ClusterPseudoLabeler(C).state_dict()
    assert fresh == {"centroids": None, "labels": None}
