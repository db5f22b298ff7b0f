import sys

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import top_k
from tpsnet_plugin.evaluation.knn import StableFaissKNN, StableTorchKNN, make_knn_func

KNNS = ("faiss", "torch")


def brute_force_top_k(query, gallery, k):
    """Loop reference: each gallery item's inner product, ranked by (-similarity, index)."""
    similarities, indices = [], []
    for q in query.tolist():
        scores = [sum(a * b for a, b in zip(q, g)) for g in gallery.tolist()]
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]
        indices.append(order)
        similarities.append([scores[j] for j in order])
    return similarities, indices


def integer_data(seed, n=40, m=70, d=6, low=-2, high=3):
    """Small integer vectors: inner products are exact in float32 and tie very often."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(low, high, (n, d), generator=generator).float(),
            torch.randint(low, high, (m, d), generator=generator).float())


@pytest.mark.parametrize("knn", KNNS)
@pytest.mark.parametrize("k", [1, 4, 13, 70, 75])
def test_matches_the_brute_force_ranking_with_ties(knn, k):
    query, gallery = integer_data(k)
    expected_similarities, expected_indices = brute_force_top_k(query, gallery, k)
    for batch_size in (3, 1000):
        similarities, indices = top_k(query, gallery, k, knn=knn, batch_size=batch_size)
        assert indices.dtype == torch.long and indices.shape == (len(query), min(k, len(gallery)))
        assert indices.tolist() == expected_indices
        assert similarities.tolist() == expected_similarities


@pytest.mark.parametrize("knn", KNNS)
def test_the_ties_cross_the_cut_and_plain_topk_gets_them_wrong(knn):
    # the premise of the test above: ties straddle the k-th place, where torch.topk and faiss
    # choose among tied items their own way
    query, gallery = integer_data(13)
    sims = query @ gallery.T
    kth = sims.topk(13, dim=1).values
    assert (sims.topk(14, dim=1).values[:, 13] == kth[:, 12]).sum() > len(query) // 2
    _, expected = brute_force_top_k(query, gallery, 13)
    plain = (FaissKNN(index_init_fn=__import__("faiss").IndexFlatIP)(query, 13, gallery)[1]
             if knn == "faiss" else sims.topk(13, dim=1).indices)
    assert plain.tolist() != expected
    assert top_k(query, gallery, 13, knn=knn)[1].tolist() == expected


@pytest.mark.parametrize("knn", KNNS)
def test_vectors_are_compared_by_inner_product_as_given(knn):
    gallery = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    similarities, indices = top_k(torch.tensor([[1.0, 0.5]]), gallery, 3, knn=knn)
    assert indices.tolist() == [[1, 3, 0]]  # not normalised: the long vectors win, ties by index
    assert similarities.tolist() == [[3.0, 3.0, 1.0]]


@pytest.mark.parametrize("knn", KNNS)
def test_random_data_matches_a_stable_sort(knn):
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(50, 16, generator=generator), torch.randn(300, 16, generator=generator)
    expected = np.argsort(-(query.double() @ gallery.double().T).numpy(), axis=1, kind="stable")
    similarities, indices = top_k(query.numpy(), gallery.numpy(), 20, knn=knn, batch_size=7)
    assert (indices.numpy() == expected[:, :20]).all()
    torch.testing.assert_close(similarities, (query @ gallery.T).gather(1, indices))


def test_faiss_and_torch_agree_and_half_inputs_are_upcast():
    query, gallery = integer_data(5, n=30, m=200)
    assert all(torch.equal(a, b) for a, b in zip(top_k(query, gallery, 25, knn="faiss"),
                                                 top_k(query, gallery, 25, knn="torch")))
    half = top_k(query.half(), gallery.bfloat16(), 25, knn="torch")
    assert half[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(half, top_k(query, gallery, 25, knn="torch")))


def test_backend_choice_and_pml_compatibility(monkeypatch):
    assert isinstance(make_knn_func("faiss"), StableFaissKNN)
    assert isinstance(make_knn_func("faiss"), FaissKNN)
    assert isinstance(make_knn_func("auto"), StableFaissKNN)
    torch_knn = make_knn_func("torch", batch_size=5)
    assert isinstance(torch_knn, StableTorchKNN) and isinstance(torch_knn, CustomKNN)
    query, gallery = integer_data(6)
    # pml's knn_func call signature
    assert torch.equal(torch_knn(query, 4, gallery, False)[1], top_k(query, gallery, 4)[1])
    with pytest.raises(ValueError, match="ref_includes_query must be False"):
        torch_knn(query, 4, gallery, True)
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    assert isinstance(make_knn_func("auto"), StableTorchKNN)
    with pytest.raises(ImportError, match="tpsnet-plugin\\[cpu\\]"):
        make_knn_func("faiss")


def test_bad_arguments_raise_clear_errors():
    query, gallery = integer_data(7)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(query, gallery, 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(query, gallery, True)
    with pytest.raises(ValueError, match="one width"):
        top_k(query, gallery[:, :3], 2)
    with pytest.raises(ValueError, match="gallery is empty"):
        top_k(query, gallery[:0], 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        top_k(query, torch.full_like(gallery, float("nan")), 2)
    with pytest.raises(ValueError, match="knn must be one of"):
        top_k(query, gallery, 2, knn="annoy")
    with pytest.raises(ValueError, match="batch_size"):
        top_k(query, gallery, 2, knn="torch", batch_size=0)
