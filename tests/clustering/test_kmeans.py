import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.clustering import (
    BaseKMeans,
    FaissKMeans,
    SklearnKMeans,
    assign,
    create_kmeans,
    match_centroids,
)

from .planted import C, E, centred, make_domains

BACKENDS = {"faiss": FaissKMeans, "sklearn": SklearnKMeans}


def planted_domain(domain=2, noise=0.1):
    x, d, y = make_domains(noise=noise)
    x = centred(x, d)
    return x[d == domain], y[d == domain]


def backend(name, **kwargs):
    pytest.importorskip(name)
    return BACKENDS[name](C, **kwargs)


@pytest.mark.parametrize("name", sorted(BACKENDS))
@pytest.mark.parametrize("spherical", [True, False])
def test_backend_recovers_planted_clusters(name, spherical):
    x, y = planted_domain()
    kmeans = backend(name, nredo=3, spherical=spherical)
    centroids = kmeans.fit(x)
    assert centroids.dtype == np.float32 and centroids.shape == (C, E)
    if spherical:
        assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-4)
    labels = kmeans.assign(x, centroids)
    assert labels.dtype == np.int64 and labels.shape == y.shape
    assert normalized_mutual_info_score(y, labels) > 0.99


@pytest.mark.parametrize("a, b", [("faiss", "sklearn"), ("sklearn", "faiss")])
def test_backends_agree_with_each_other(a, b):
    x, y = planted_domain()
    first, second = backend(a, seed=1), backend(b, seed=2)
    ca, cb = first.fit(x), second.fit(x)
    perm, cosines = match_centroids(cb, ca)
    assert sorted(perm.tolist()) == list(range(C)) and cosines.min() > 0.99
    # the same partition, with b's ids mapped onto a's by the centroid matching
    assert (perm[second.assign(x, cb)] == first.assign(x, ca)).all()
    # each backend started from the other's centroids stays there
    assert np.allclose(first.fit(x, init=cb), cb, atol=1e-3)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_init_runs_once_and_is_deterministic(name):
    x, _ = planted_domain(noise=0.5)
    kmeans = backend(name, niter=1, nredo=4)
    init = x[:C].copy()
    one_step = kmeans.fit(x, init=init)
    assert np.array_equal(one_step, kmeans.fit(x, init=init))
    # one Lloyd step from init: the normalised means of init's assignment
    labels = assign(x, init / np.linalg.norm(init, axis=1, keepdims=True))
    means = np.stack([x[labels == c].mean(0) for c in range(C)])
    expected = means / np.linalg.norm(means, axis=1, keepdims=True)
    assert np.allclose(one_step, expected, atol=1e-4)
    assert kmeans._runs(init) == 1 and kmeans._runs(None) == 4


def test_assign_by_cosine_and_by_distance():
    rng = np.random.default_rng(0)
    x, centroids = rng.normal(size=(50, 5)), rng.normal(size=(4, 5))
    expected_ip = np.array([np.argmax([row @ c for c in centroids]) for row in x])
    expected_l2 = np.array([np.argmin([np.sum((row - c) ** 2) for c in centroids]) for row in x])
    assert (assign(x, centroids) == expected_ip).all()
    assert (assign(x, centroids, spherical=False) == expected_l2).all()
    assert (expected_ip != expected_l2).any()  # unnormalised centroids: the metrics differ


def test_create_kmeans():
    pytest.importorskip("faiss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = create_kmeans("auto", C, niter=7, nredo=2, seed=4, spherical=False)
    assert type(auto) is FaissKMeans
    assert (auto.num_clusters, auto.niter, auto.nredo, auto.seed, auto.spherical, auto.use_gpu) == (
        C, 7, 2, 4, False, False)
    assert type(create_kmeans("faiss", C)) is FaissKMeans
    sk = create_kmeans("sklearn", C, niter=7)
    assert type(sk) is SklearnKMeans and isinstance(sk, BaseKMeans) and sk.niter == 7
    assert "SklearnKMeans(num_clusters=6, niter=7" in repr(sk)
    with pytest.raises(ValueError, match="kmeans must be one of"):
        create_kmeans("cuml", C)
    with pytest.raises(ValueError, match="nredo must be >= 1"):
        create_kmeans("sklearn", C, nredo=0)


def test_auto_falls_back_to_sklearn_with_a_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.warns(UserWarning, match="faiss is not installed"):
        kmeans = create_kmeans("auto", C)
    assert type(kmeans) is SklearnKMeans
    with pytest.raises(ImportError):
        create_kmeans("faiss", C)
    with pytest.warns(UserWarning, match="use_gpu=True needs faiss-gpu"):
        create_kmeans("sklearn", C, use_gpu=True)


def test_faiss_use_gpu_without_gpu_warns():
    faiss = pytest.importorskip("faiss")
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible")
    with pytest.warns(UserWarning, match="faiss sees no GPU"):
        kmeans = FaissKMeans(C, use_gpu=True)
    assert "use_gpu=True" in repr(kmeans)


def test_base_kmeans_is_abstract():
    with pytest.raises(TypeError):
        BaseKMeans(C)
