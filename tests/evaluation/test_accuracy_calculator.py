import sys

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN
from sklearn.metrics import average_precision_score

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import UCDIRAccuracyCalculator

from ..references import ranked_relevance, ref_ap, ref_voc_ap

CPU = torch.device("cpu")
KNNS = ("faiss", "torch")


# ----------------------------------------------------------------- brute-force references (loops)
def similarities(query, gallery):
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def ref_ucdir_precision(sim, query_labels, gallery_labels, k):
    hits = cutoffs = 0
    for i, label in enumerate(query_labels):
        r = int(np.sum(gallery_labels == label))
        if r == 0:
            continue
        c = min(k, r)
        hits += sum(ranked_relevance(sim[i], label, gallery_labels)[:c])
        cutoffs += c
    return 100.0 * hits / cutoffs


def ref_mean_precision(sim, query_labels, gallery_labels, k):
    """The usual P@k: mean over queries (with R_q > 0) of hits(k) / k."""
    values = [sum(ranked_relevance(sim[i], label, gallery_labels)[:k]) / k
              for i, label in enumerate(query_labels) if np.any(gallery_labels == label)]
    return 100.0 * np.mean(values)


def ref_map(sim, query_labels, gallery_labels, ap_fn=ref_ap):
    values = [ap_fn(ranked_relevance(sim[i], label, gallery_labels))
              for i, label in enumerate(query_labels) if np.any(gallery_labels == label)]
    return 100.0 * np.mean(values)


def random_data(seed, n=60, m=80, d=16, classes=6):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n),
            rng.standard_normal((m, d)).astype(np.float32), rng.integers(0, classes, m))


def tied_data(seed, n=60, m=90, classes=4):
    """±1 vectors in 16 dimensions: cosines are multiples of 1/16, exact in float32.

    Most rows tie across the cut at k = 20 and some tie only inside their top 7, so both the
    exact recomputation and the re-ordering of the kNN candidates are exercised.
    """
    rng = np.random.default_rng(seed)
    return (np.sign(rng.standard_normal((n, 16))).astype(np.float32), rng.integers(0, classes, n),
            np.sign(rng.standard_normal((m, 16))).astype(np.float32), rng.integers(0, classes, m))


def accuracy(data, knn="torch", **kwargs):
    return UCDIRAccuracyCalculator(knn=knn, device=CPU, **kwargs).get_accuracy(*data)


# ----------------------------------------------------------------- P@k
@pytest.mark.parametrize("knn", KNNS)
def test_ucdir_precision_differs_from_mean_precision_when_some_r_q_below_k(knn):
    rng = np.random.default_rng(0)
    centers = np.eye(8, dtype=np.float32)[:3]
    gallery_labels = np.array([0] + [1] * 2 + [2] * 8)  # R_q = 1, 2, 8 against k = 5
    query_labels = np.repeat([0, 1, 2], 4)
    gallery = centers[gallery_labels] + 0.05 * rng.standard_normal((11, 8)).astype(np.float32)
    query = centers[query_labels] + 0.05 * rng.standard_normal((12, 8)).astype(np.float32)
    clustered = (query, query_labels, gallery, gallery_labels)
    for data in (clustered, random_data(1, classes=20)):
        sim = similarities(data[0], data[2])
        result = accuracy(data, knn, ks=(1, 5, 15))
        for k in (1, 5, 15):
            assert result[f"precision_at_{k}"] == pytest.approx(
                ref_ucdir_precision(sim, data[1], data[3], k), abs=1e-9)
        ucdir = ref_ucdir_precision(sim, data[1], data[3], 5)
        assert ucdir != pytest.approx(ref_mean_precision(sim, data[1], data[3], 5), abs=0.1)
    # perfect retrieval: 100 under the UCDIR cut-off, far below 100 for the usual mean P@5
    assert accuracy(clustered, knn, ks=(5,))["precision_at_5"] == 100.0


@pytest.mark.parametrize("knn", KNNS)
def test_queries_whose_class_is_absent_from_the_gallery_are_dropped(knn):
    query, query_labels, gallery, gallery_labels = random_data(2, classes=5)
    query_labels = query_labels.copy()
    query_labels[::3] = 7  # class 7 never occurs in the gallery
    present = query_labels != 7
    full = accuracy((query, query_labels, gallery, gallery_labels), knn, voc_map=True)
    kept = accuracy((query[present], query_labels[present], gallery, gallery_labels), knn,
                    voc_map=True)
    assert full == kept
    sim = similarities(query, gallery)
    assert full["precision_at_5"] == pytest.approx(
        ref_ucdir_precision(sim, query_labels, gallery_labels, 5), abs=1e-9)
    assert full["map_at_all"] == pytest.approx(ref_map(sim, query_labels, gallery_labels))
    none_left = accuracy((query, np.full(len(query), 7), gallery, gallery_labels), knn)
    assert all(np.isnan(v) for v in none_left.values())


# ----------------------------------------------------------------- ties
@pytest.mark.parametrize("knn", KNNS)
def test_ties_are_broken_by_gallery_index(knn):
    v, w = [1.0, 0.0], [0.6, 0.8]
    query, query_labels = np.array([v]), np.array([0])
    # the two copies of v tie; the lower gallery index comes first
    wrong_first = accuracy((query, query_labels, np.array([v, v, w]), np.array([1, 0, 0])), knn,
                           ks=(1,))
    right_first = accuracy((query, query_labels, np.array([w, v, v]), np.array([0, 0, 1])), knn,
                           ks=(1,))
    assert wrong_first == {"precision_at_1": 0.0,
                           "map_at_all": pytest.approx(100 * (1 / 2 + 2 / 3) / 2)}
    assert right_first == {"precision_at_1": 100.0,
                           "map_at_all": pytest.approx(100 * (1 + 2 / 3) / 2)}


def test_heavy_ties_match_the_stable_reference_on_both_paths():
    data = tied_data(3)
    sim = similarities(data[0], data[2])
    ks = (1, 3, 7, 20)
    # faiss alone orders and cuts tied runs its own way, so this data does exercise the fix-up
    index = FaissKNN(index_init_fn=faiss.IndexFlatIP)
    _, raw = index(torch.nn.functional.normalize(torch.from_numpy(data[0]), dim=1), 20,
                   torch.nn.functional.normalize(torch.from_numpy(data[2]), dim=1))
    stable = np.argsort(-sim, axis=1, kind="stable")[:, :20]
    assert (raw.numpy() != stable).any()
    for knn in KNNS:
        result = accuracy(data, knn, ks=ks, voc_map=True)
        for k in ks:
            assert result[f"precision_at_{k}"] == pytest.approx(
                ref_ucdir_precision(sim, data[1], data[3], k), abs=1e-9)
        assert result["map_at_all"] == pytest.approx(ref_map(sim, data[1], data[3]))
        assert result["map_at_all_voc"] == pytest.approx(
            ref_map(sim, data[1], data[3], ref_voc_ap))


@pytest.mark.parametrize("make_data", [random_data, tied_data])
def test_faiss_and_torch_paths_agree_exactly(make_data):
    for seed in (4, 5):
        data = make_data(seed)
        ks = (1, 3, 10, 40)
        assert accuracy(data, "faiss", ks=ks, voc_map=True) == accuracy(data, "torch", ks=ks,
                                                                        voc_map=True)


# ------------------------------------------------------------ class structure, dtypes, batching
@pytest.mark.parametrize("knn", KNNS)
def test_one_class_is_perfect_and_many_classes_match_the_reference(knn):
    query, _, gallery, _ = random_data(6)
    one = accuracy((query, np.zeros(len(query)), gallery, np.zeros(len(gallery))), knn,
                   voc_map=True)
    assert one == {"precision_at_1": 100.0, "precision_at_5": 100.0, "precision_at_15": 100.0,
                   "map_at_all": pytest.approx(100.0), "map_at_all_voc": pytest.approx(100.0)}
    data = random_data(7, n=120, m=100, classes=40)  # many classes with R_q of 0 to ~7
    sim = similarities(data[0], data[2])
    result = accuracy(data, knn, ks=(1, 2, 3, 10))
    for k in (1, 2, 3, 10):
        assert result[f"precision_at_{k}"] == pytest.approx(
            ref_ucdir_precision(sim, data[1], data[3], k), abs=1e-9)
    assert result["map_at_all"] == pytest.approx(ref_map(sim, data[1], data[3]))


@pytest.mark.parametrize("knn", KNNS)
def test_half_precision_inputs_are_upcast(knn):
    query, query_labels, gallery, gallery_labels = random_data(8)
    q16, g16 = query.astype(np.float16), gallery.astype(np.float16)
    result = accuracy((q16, query_labels, g16, gallery_labels), knn)
    assert result == accuracy((q16.astype(np.float32), query_labels, g16.astype(np.float32),
                               gallery_labels), knn)
    sim = similarities(q16, g16)
    assert result["precision_at_5"] == pytest.approx(
        ref_ucdir_precision(sim, query_labels, gallery_labels, 5), abs=1e-9)
    assert result["map_at_all"] == pytest.approx(ref_map(sim, query_labels, gallery_labels))
    qb, gb = torch.from_numpy(query).bfloat16(), torch.from_numpy(gallery).bfloat16()
    assert accuracy((qb, query_labels, gb, gallery_labels), knn) == accuracy(
        (qb.float(), query_labels, gb.float(), gallery_labels), knn)


@pytest.mark.parametrize("knn", KNNS)
def test_small_batches_give_the_same_result_as_one_batch(knn):
    for data in (random_data(9), tied_data(9)):
        assert accuracy(data, knn, batch_size=7, voc_map=True) == accuracy(
            data, knn, batch_size=10_000, voc_map=True)


# ----------------------------------------------------------------- mAP@All
def test_map_at_all_matches_brute_force_and_sklearn():
    data = random_data(10, n=40, m=70, classes=5)
    sim = similarities(data[0], data[2])
    sklearn_aps = [average_precision_score(data[3] == label, sim[i])  # no ties in this data
                   for i, label in enumerate(data[1]) if np.any(data[3] == label)]
    result = accuracy(data, "torch", voc_map=True)
    assert result["map_at_all"] == pytest.approx(ref_map(sim, data[1], data[3]))
    assert result["map_at_all"] == pytest.approx(100 * np.mean(sklearn_aps))
    voc = ref_map(sim, data[1], data[3], ref_voc_ap)
    assert result["map_at_all_voc"] == pytest.approx(voc)
    assert result["map_at_all_voc"] > result["map_at_all"]  # interpolation can only raise AP


# ----------------------------------------------------------------- pml integration and errors
def test_default_include_is_the_ucdir_metrics_only():
    data = random_data(11)
    assert list(accuracy(data)) == ["precision_at_1", "precision_at_5", "precision_at_15",
                                    "map_at_all"]
    assert list(accuracy(data, ks=(50, 2), voc_map=True)) == [
        "precision_at_50", "precision_at_2", "map_at_all", "map_at_all_voc"]
    assert list(accuracy(data, exclude=("map_at_all",))) == [
        "precision_at_1", "precision_at_5", "precision_at_15"]


def test_pml_builtin_metrics_are_computed_by_pml_at_their_own_depth():
    data = random_data(12)
    builtins = ("mean_average_precision", "r_precision")
    plain = AccuracyCalculator(include=builtins, k=3, device=CPU,
                               knn_func=CustomKNN(CosineSimilarity()))
    expected = plain.get_accuracy(*data)
    result = accuracy(data, include=("precision_at_5", *builtins), ks=(5,), k=3)
    assert {n: result[n] for n in builtins} == pytest.approx(expected)
    sim = similarities(data[0], data[2])
    assert result["precision_at_5"] == pytest.approx(
        ref_ucdir_precision(sim, data[1], data[3], 5), abs=1e-9)


def test_knn_backend_choice_and_missing_faiss(monkeypatch):
    assert isinstance(UCDIRAccuracyCalculator(knn="faiss", device=CPU).knn_func, FaissKNN)
    assert not isinstance(UCDIRAccuracyCalculator(knn="torch", device=CPU).knn_func, FaissKNN)
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match=r'pip install "tpsnet-plugin\[cpu\]"'):
        UCDIRAccuracyCalculator(knn="faiss", device=CPU)
    fallback = UCDIRAccuracyCalculator(knn="auto", device=CPU).knn_func
    assert isinstance(fallback, CustomKNN) and not isinstance(fallback, FaissKNN)


def test_bad_arguments_raise_clear_errors():
    data = random_data(13)
    with pytest.raises(ValueError, match="ref_includes_query must be False"):
        UCDIRAccuracyCalculator(device=CPU).get_accuracy(*data, ref_includes_query=True)
    with pytest.raises(ValueError, match="ks must be distinct positive integers"):
        UCDIRAccuracyCalculator(ks=(5, 5))
    with pytest.raises(ValueError, match="knn must be one of"):
        UCDIRAccuracyCalculator(knn="annoy")
    with pytest.raises(TypeError, match="knn='faiss' or knn='torch'"):
        UCDIRAccuracyCalculator(knn_func=CustomKNN(CosineSimilarity()))
    with pytest.raises(ValueError, match="one class label per item"):
        accuracy((data[0], data[1][:, None], data[2], data[3]))
    with pytest.raises(ValueError, match="widths differ"):
        accuracy((data[0][:, :8], data[1], data[2], data[3]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        accuracy((np.full_like(data[0], np.nan), data[1], data[2], data[3]))


@pytest.mark.parametrize("make_data", [random_data, tied_data])
def test_map_rank_counting_path_matches_the_stable_reference(make_data):
    # Without the VOC variant, mAP@All counts ranks instead of sorting the gallery; ties
    # (tied_data) are broken by gallery index through the rank keys. A batch size of 7 splits
    # the class groups.
    data = make_data(5)
    sim = similarities(data[0], data[2])
    result = accuracy(data, "torch", ks=(1,), batch_size=7)
    assert result["map_at_all"] == pytest.approx(ref_map(sim, data[1], data[3]))


@pytest.mark.parametrize("make_data", [random_data, tied_data])
def test_precision_at_k_from_the_ranks_of_the_map_pass_skips_the_knn(make_data):
    # With map_at_all (and no VOC mAP) P@k is read from the mAP pass's exact ranks: no kNN runs,
    # and the values are those of the kNN path and of the brute-force reference.
    data = make_data(12)
    ks = (1, 3, 10, 40)
    calculator = UCDIRAccuracyCalculator(knn="torch", ks=ks, device=CPU, batch_size=5)

    def no_knn(*args, **kwargs):
        raise AssertionError("the kNN ran although the mAP pass gives P@k")

    calculator.knn_func = no_knn
    from_ranks = calculator.get_accuracy(*data)
    from_knn = accuracy(data, "torch", ks=ks, include=[f"precision_at_{k}" for k in ks])
    sim = similarities(data[0], data[2])
    for k in ks:
        name = f"precision_at_{k}"
        assert from_ranks[name] == from_knn[name]
        assert from_ranks[name] == pytest.approx(ref_ucdir_precision(sim, data[1], data[3], k),
                                                 abs=1e-9)
    # with the VOC mAP (a sort per row) the kNN gives P@k again
    with_voc = UCDIRAccuracyCalculator(knn="torch", ks=ks, voc_map=True, device=CPU)
    with_voc.knn_func = no_knn
    with pytest.raises(AssertionError, match="the kNN ran"):
        with_voc.get_accuracy(*data)
