import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.miners import DomainPromptMiner
from tpsnet_plugin.text_prior import PromptFeatures
from tpsnet_plugin.utils import encode_domain_labels


def brute_force_pairs(domains, clusters, ref_domains, ref_clusters, same_tensor):
    pos, neg = set(), set()
    for i in range(len(domains)):
        for j in range(len(ref_domains)):
            if same_tensor and i == j:
                continue
            if clusters[i] == ref_clusters[j] and domains[i] != ref_domains[j]:
                pos.add((i, j))
            if clusters[i] != ref_clusters[j]:
                neg.add((i, j))
    return pos, neg


def as_sets(tuple_):
    a1, p, a2, n = (t.tolist() for t in tuple_)
    assert len(set(zip(a1, p))) == len(a1) and len(set(zip(a2, n))) == len(a2)
    return set(zip(a1, p)), set(zip(a2, n))


def random_batch(n, num_domains, num_clusters, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    domains = torch.randint(num_domains, (n,), generator=g)
    clusters = torch.randint(num_clusters, (n,), generator=g)
    emb = torch.randn(n, width, generator=g)
    return emb, domains, clusters


def test_pairs_match_brute_force_without_refinement():
    emb, d, c = random_batch(14, 3, 4)
    miner = DomainPromptMiner(num_clusters=4)
    out = miner(emb, encode_domain_labels(d, c, 4))
    pos, neg = brute_force_pairs(d.tolist(), c.tolist(), d.tolist(), c.tolist(), True)
    assert as_sets(out) == (pos, neg)
    assert len(pos) > 0 and len(neg) > 0
    assert miner.num_changed == 0
    assert torch.equal(miner.refined_labels, encode_domain_labels(d, c, 4))


def test_pairs_with_separate_ref_emb_match_brute_force():
    emb, d, c = random_batch(9, 2, 3, seed=1)
    ref, rd, rc = random_batch(11, 2, 3, seed=2)
    miner = DomainPromptMiner(num_clusters=3)
    out = miner(emb, encode_domain_labels(d, c, 3), ref, encode_domain_labels(rd, rc, 3))
    # Separate reference tensors: emb[i] and ref[i] are different samples, so (i, i) counts.
    pos, neg = brute_force_pairs(d.tolist(), c.tolist(), rd.tolist(), rc.tolist(), False)
    assert as_sets(out) == (pos, neg)


def softmax_refine(emb, domains, clusters, text, threshold, scale):
    """Loop reference of the refinement (numpy)."""
    emb, text = emb.numpy().astype(np.float64), text.numpy().astype(np.float64)
    out = []
    for x, d, c in zip(emb, domains.tolist(), clusters.tolist()):
        cos = [x @ t / (np.linalg.norm(x) * np.linalg.norm(t)) for t in text[d]]
        logits = scale * np.array(cos)
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        out.append(int(prob.argmax()) if prob.max() >= threshold else c)
    return out


def hand_built_case():
    # Domain 0 prompts point along e0, e1, e2; domain 1 uses the same directions in another order,
    # so the argmax depends on the domain. e3 is orthogonal to every prompt (uniform softmax).
    eye = torch.eye(5)
    text = torch.stack([eye[[0, 1, 2]] * 2.0, eye[[2, 0, 1]] * 0.5])  # norms must not matter
    emb = torch.stack([
        eye[0] * 3,                # d0: confident cluster 0
        eye[1] + 0.05 * eye[4],    # d0: confident cluster 1
        eye[3],                    # d0: uniform -> keeps its label
        eye[0] + eye[1],           # d0: tie between 0 and 1 (p = 0.5 each) -> keeps its label
        eye[0],                    # d1: confident cluster 1 (domain-1 order)
        eye[2],                    # d1: confident cluster 0
        eye[3] - eye[4],           # d1: uniform -> keeps its label
        eye[1] + 0.2 * eye[3],     # d1: confident cluster 2
    ])
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = torch.tensor([2, 1, 2, 1, 0, 2, 1, 1])
    return emb, domains, clusters, text


def test_refinement_with_hand_built_text_features():
    emb, d, c, text = hand_built_case()
    miner = DomainPromptMiner(num_clusters=3, text_features=text, threshold=0.6)
    out = miner(emb, encode_domain_labels(d, c, 3))
    expected = softmax_refine(emb, d, c, text, 0.6, 100.0)
    assert expected == [0, 1, 2, 1, 1, 0, 1, 2]  # the hand-built case does what it claims
    expected_labels = encode_domain_labels(d, torch.tensor(expected), 3)
    assert miner.refined_labels.tolist() == expected_labels.tolist()
    assert miner.num_changed == sum(e != x for e, x in zip(expected, c.tolist())) == 4
    pos, neg = brute_force_pairs(d.tolist(), expected, d.tolist(), expected, True)
    assert as_sets(out) == (pos, neg)


def test_threshold_and_set_text_features():
    emb, d, c, text = hand_built_case()
    labels = encode_domain_labels(d, c, 3)
    miner = DomainPromptMiner(num_clusters=3, text_features=text, threshold=1.01)
    assert as_sets(miner(emb, labels)) == as_sets(DomainPromptMiner(3)(emb, labels))
    assert miner.num_changed == 0
    miner.threshold = 0.6
    miner(emb, labels)
    assert miner.num_changed == 4
    miner.set_text_features(None)
    miner(emb, labels)
    assert miner.num_changed == 0 and miner.text_features is None
    # A low temperature makes the tie case and small margins matter: compare with the loop again.
    miner.set_text_features(text)
    miner.logit_scale = 5.0
    miner.threshold = 0.4
    miner(emb, labels)
    assert miner.refined_labels.tolist() == encode_domain_labels(
        d, torch.tensor(softmax_refine(emb, d, c, text, 0.4, 5.0)), 3).tolist()


def test_text_features_are_read_from_a_holder_outside_the_state_dict():
    miner = DomainPromptMiner(num_clusters=3, text_features=torch.randn(2, 3, 5))
    assert miner.state_dict() == {} and not list(miner.buffers())  # the model saves them, not the miner
    shared = PromptFeatures()
    reader = DomainPromptMiner(num_clusters=3, threshold=0.0, prompt_features=shared)
    labels = torch.tensor([0, 1, 2, 3])
    embeddings = torch.randn(4, 5)
    assert torch.equal(reader.refine(embeddings, labels), labels)  # no features yet: no refinement
    shared.set(torch.randn(2, 3, 5))  # set by another reader of the holder (the model)
    own = DomainPromptMiner(num_clusters=3, threshold=0.0, text_features=shared.features)
    expected = own.refine(embeddings, labels)
    assert torch.equal(reader.refine(embeddings, labels), expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_clusters"):
        DomainPromptMiner(num_clusters=3, text_features=torch.randn(2, 4, 5))
    miner = DomainPromptMiner(num_clusters=3, text_features=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="size 6"):
        miner(torch.randn(4, 6), torch.tensor([0, 3, 1, 1]))


def test_labels_beyond_the_text_features_raise_naming_the_labels_and_prompts():
    miner = DomainPromptMiner(num_clusters=3, text_features=torch.randn(2, 3, 5))
    # 2 domains x 3 clusters = prompts 0..5: labels 6 and 8 (domain 2) match none of them.
    message = r"labels \[6, 8\] match none of the 6 prompts \(2 domains x 3 clusters\).*below 6"
    with pytest.raises(ValueError, match=message):
        miner(torch.randn(4, 5), torch.tensor([0, 8, 6, 1]))
    with pytest.raises(ValueError, match=message):  # the reference labels are checked too
        miner(torch.randn(4, 5), torch.tensor([0, 3, 5, 1]), torch.randn(3, 5), torch.tensor([6, 8, 2]))
    miner.set_text_features(torch.randn(3, 3, 5))  # with domain 2's prompts they are refined
    labels = torch.tensor([0, 8, 6, 1])
    assert torch.equal(miner.refine(torch.randn(4, 5), labels) // 3, labels // 3)


@pytest.mark.parametrize("scale", [0.0, -100.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_logit_scale_is_refused(scale):
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0.*exp\(logit_scale\)"):
        DomainPromptMiner(num_clusters=3, logit_scale=scale)


def test_nan_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold is NaN.*such as 0.5"):
        DomainPromptMiner(num_clusters=3, threshold=float("nan"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_text_features_are_refused(bad):
    text = torch.randn(2, 3, 5)
    text[0, 1, 4] = bad
    miner = DomainPromptMiner(num_clusters=3)
    with pytest.raises(ValueError, match="text_features contain NaN or inf"):
        miner.set_text_features(text)
    assert miner.text_features is None


def test_recorded_stats():
    emb, d, c, text = hand_built_case()
    miner = DomainPromptMiner(num_clusters=3, text_features=text, threshold=0.6, collect_stats=True)
    a1, _, a2, _ = miner(emb, encode_domain_labels(d, c, 3))
    assert {"num_pos_pairs", "num_neg_pairs", "num_changed"} <= set(miner._record_these_stats)
    assert {"num_clusters", "threshold", "logit_scale"} <= set(miner._record_these)
    assert (miner.num_pos_pairs, miner.num_neg_pairs, miner.num_changed) == (len(a1), len(a2), 4)


LOSSES = [
    losses.NTXentLoss(temperature=0.2),
    losses.SupConLoss(temperature=0.2),
    losses.MultiSimilarityLoss(),
    losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0),
]


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_feeds_pml_losses(loss_fn):
    emb, d, c = random_batch(16, 2, 3, width=6, seed=3)
    emb.requires_grad_(True)
    labels = encode_domain_labels(d, c, 3)
    text = torch.randn(2, 3, 6)
    miner = DomainPromptMiner(num_clusters=3, text_features=text, threshold=0.5, logit_scale=10.0)
    tuple_ = miner(emb, labels)
    refined = softmax_refine(emb.detach(), d, c, text, 0.5, 10.0)
    pos, neg = brute_force_pairs(d.tolist(), refined, d.tolist(), refined, True)
    by_hand = tuple(torch.tensor(x) for x in (*zip(*sorted(pos)), *zip(*sorted(neg))))
    loss = loss_fn(emb, labels, tuple_)
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.allclose(loss, loss_fn(emb, labels, by_hand), atol=1e-6)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_one_domain_per_sample_mines_all_pairs(loss_fn):
    # When every sample is its own domain, "cross-domain positives" are all positives: the
    # miner then reproduces pml's default (no indices_tuple) behaviour exactly.
    n = 12
    emb, _, c = random_batch(n, 1, 3, width=6, seed=4)
    labels = encode_domain_labels(torch.arange(n), c, 3)
    tuple_ = DomainPromptMiner(num_clusters=3)(emb, labels)
    assert math.isclose(loss_fn(emb, c, tuple_).item(), loss_fn(emb, c).item(), rel_tol=1e-6)
