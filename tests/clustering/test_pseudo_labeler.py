import io
import sys
import warnings

import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.clustering import (
    ClusterPseudoLabeler,
    ConsensusAlignment,
    FaissKMeans,
    ReferenceAlignment,
    SklearnKMeans,
)

from .planted import C, E, check_result, make_ambiguous_reference, make_domains


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


@pytest.mark.parametrize("name, alignment", [
    ("consensus", ConsensusAlignment()), ("consensus", ConsensusAlignment(max_rounds=3)),
    ("reference", ReferenceAlignment()),
])
def test_alignment_objects_equal_their_names(name, alignment):
    x, d, y = make_ambiguous_reference()
    by_name, by_object = ClusterPseudoLabeler(C, alignment=name), ClusterPseudoLabeler(C, alignment=alignment)
    assert by_object.alignment is alignment
    for x_fit in (x, x + 0.01 * np.random.default_rng(1).normal(size=x.shape).astype(np.float32)):
        a, b = by_name.fit(x_fit, d, y), by_object.fit(x_fit, d, y)  # cold, then warm
        assert (a.labels == b.labels).all() and a.matching_cost == b.matching_cost
        assert all((p == q).all() for p, q in zip(a.matching, b.matching))
    if name == "consensus":
        check_result(b, d, y)


def test_consensus_keeps_warm_started_ids():
    x, d, y = make_ambiguous_reference()
    labeler = ClusterPseudoLabeler(C)
    first = check_result(labeler.fit(x, d, y), d, y)
    labeler.kmeans.seed = 3
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
    labeler.kmeans.seed = 3
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
    labeler = ClusterPseudoLabeler(C, spherical=False, center_per_domain=False)
    assert not labeler.spherical and not labeler.kmeans.spherical
    check_result(labeler.fit(x, d, y), d, y)


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
    with pytest.raises(ValueError, match=r"features must be \(N, e\)"):
        ClusterPseudoLabeler(C).fit(x[:, 0], d)
    with pytest.raises(ValueError, match="non-negative"):
        ClusterPseudoLabeler(C).fit(x, d - 1)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClusterPseudoLabeler(C).fit(x, d)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_clusters": 0}, ValueError, "num_clusters must be >= 1"),
    ({"niter": 0}, ValueError, "niter must be >= 1"),
    ({"nredo": 0}, ValueError, "nredo must be >= 1"),
    ({"anchor": -1}, ValueError, "anchor"),
    ({"anchor": True}, ValueError, "anchor"),
    ({"alignment": "pairwise"}, ValueError, "alignment must be 'consensus' or 'reference'"),
    ({"alignment": object()}, TypeError, "alignment must be a name or an object with align"),
    ({"kmeans": "torch"}, ValueError, "kmeans must be one of"),
    ({"kmeans": object()}, TypeError, "kmeans must be a name or an object with fit"),
    ({"kmeans": SklearnKMeans(C + 1)}, ValueError, "num_clusters=7"),
])
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        ClusterPseudoLabeler(**{"num_clusters": C, **kwargs})


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


def test_warm_start_with_an_empty_previous_cluster_uses_the_stored_centroid():
    x, d, y = make_domains()
    labeler = ClusterPseudoLabeler(C)
    first = labeler.fit(x, d, y)
    state = labeler.state_dict()
    labels = state["labels"].clone()
    labels[(state["labels"] == 2) & torch.from_numpy(d == 1)] = 3  # cluster 2 empty in domain 1
    labeler.load_state_dict({"centroids": state["centroids"], "labels": labels})
    second = labeler.fit(x, d, y)
    assert (second.labels == first.labels).all()
    labeler.load_state_dict({"centroids": None, "labels": labels})
    with pytest.raises(ValueError, match=r"cluster\(s\) \[2\] of the previous fit are empty in domain 1"):
        labeler.fit(x, d)


def test_sklearn_fallback_aligns_ids(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.warns(UserWarning, match="faiss is not installed"):
        labeler = ClusterPseudoLabeler(C, nredo=2)
    assert not labeler.use_faiss and isinstance(labeler.kmeans, SklearnKMeans)
    assert labeler.kmeans.nredo == 2
    x, d, y = make_domains()
    first = check_result(labeler.fit(x, d, y), d, y)
    second = labeler.fit(x + 0.01, d, y)
    assert second.ids_changed == 0 and (check_result(second, d, y) == first).all()
    assert np.allclose(np.linalg.norm(second.centroids, axis=2), 1, atol=1e-4)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_by_name_and_as_object(backend):
    pytest.importorskip(backend)
    cls = {"faiss": FaissKMeans, "sklearn": SklearnKMeans}[backend]
    x, d, y = make_domains()
    kmeans = cls(C, niter=20, nredo=2, seed=1)
    by_object = ClusterPseudoLabeler(C, kmeans=kmeans)
    by_name = ClusterPseudoLabeler(C, nredo=2, seed=1, kmeans=backend)
    assert by_object.kmeans is kmeans and type(by_name.kmeans) is cls
    assert by_object.use_faiss == by_name.use_faiss == (backend == "faiss")
    a, b = by_object.fit(x, d, y), by_name.fit(x, d, y)
    check_result(a, d, y)
    assert (a.labels == b.labels).all() and np.array_equal(a.centroids, b.centroids)


def test_auto_kmeans_is_faiss_when_installed():
    pytest.importorskip("faiss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labeler = ClusterPseudoLabeler(C)
    assert labeler.use_faiss and isinstance(labeler.kmeans, FaissKMeans)


def test_state_dict_round_trip():
    x, d, y = make_domains()
    x2 = x + 0.02 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    original = ClusterPseudoLabeler(C)
    original.fit(x, d)
    state = original.state_dict()
    assert set(state) == {"centroids", "labels"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = ClusterPseudoLabeler(C)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    expected, got = original.fit(x2, d), resumed.fit(x2, d)
    assert got.ids_changed == expected.ids_changed == 0
    assert (got.labels == expected.labels).all()
    assert np.array_equal(got.centroids, expected.centroids)
    with pytest.raises(KeyError):
        resumed.load_state_dict({"centroids": None})
    with pytest.raises(ValueError, match="centroids must have shape"):
        resumed.load_state_dict({"centroids": torch.zeros(3, C + 1, E), "labels": None})
    fresh = ClusterPseudoLabeler(C).state_dict()
    assert fresh == {"centroids": None, "labels": None}
    buffer = io.BytesIO()
    torch.save(fresh, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == fresh
    resumed.load_state_dict(fresh)
    assert resumed.fit(x, d).ids_changed is None  # an empty state is a cold start


def test_deprecated_imports_warn_and_return_the_moved_classes():
    import tpsnet_plugin.clustering as clustering

    for module in ("tpsnet_plugin.samplers", "tpsnet_plugin.samplers.cluster_pseudo_labeler"):
        for name in ("ClusterPseudoLabeler", "ClusterResult"):
            namespace = {}
            with pytest.warns(DeprecationWarning, match=r"import it from tpsnet_plugin\.clustering"):
                exec(f"from {module} import {name}", namespace)
            assert namespace[name] is getattr(clustering, name)
        with pytest.raises(ImportError):
            exec(f"from {module} import NoSuchThing", {})
    assert tpsnet_plugin.ClusterPseudoLabeler is clustering.ClusterPseudoLabeler


def test_sampler_import_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from tpsnet_plugin.samplers import PseudoLabelSampler
        from tpsnet_plugin.samplers.pseudo_label_sampler import PseudoLabelSampler as same

        exec("from tpsnet_plugin.samplers import *", namespace := {})
    assert same is PseudoLabelSampler is namespace["PseudoLabelSampler"]
    assert "ClusterPseudoLabeler" not in namespace
