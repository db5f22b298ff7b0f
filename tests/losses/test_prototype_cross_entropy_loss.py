import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.losses import PrototypeCrossEntropyLoss

NUM_CLASSES, WIDTH = 4, 5


def reference_losses(embeddings, labels, prototypes, temperature):
    """Loop-based per-sample cross-entropy over cosine similarities to the prototypes."""
    losses = []
    for i in range(len(embeddings)):
        logits = [F.cosine_similarity(embeddings[i], p, dim=0) / temperature for p in prototypes]
        log_norm = torch.log(sum(torch.exp(logit) for logit in logits))
        losses.append(log_norm - logits[int(labels[i])])
    return losses


def reference_ema(prototypes, embeddings, labels, momentum):
    """Loop-based EMA step: only the clusters present in the batch move."""
    updated = prototypes.clone()
    for c in range(len(prototypes)):
        members = [embeddings[i] / embeddings[i].norm()
                   for i in range(len(labels)) if labels[i] == c]
        if members:
            moved = momentum * prototypes[c] + (1 - momentum) * sum(members) / len(members)
            updated[c] = moved / moved.norm()
    return updated


def make_case(seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(7, WIDTH, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 2, 2, 1, 0, 2, 1])  # cluster 3 absent
    centroids = torch.randn(NUM_CLASSES, WIDTH, generator=generator, dtype=dtype)
    return embeddings, labels, centroids


def test_value_gradient_and_ema_update_match_loop_reference():
    embeddings, labels, centroids = make_case()
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, temperature=0.5, momentum=0.7)
    loss.init_prototypes(centroids)
    before = loss.prototypes.clone()
    torch.testing.assert_close(before, F.normalize(centroids, dim=1))
    embeddings.requires_grad_(True)
    value = loss(embeddings, labels)  # training mode: updates the prototypes after the loss
    (grad,) = torch.autograd.grad(value, embeddings)  # backward still works after the update

    reference_embeddings = embeddings.detach().double().requires_grad_(True)
    expected = sum(reference_losses(reference_embeddings, labels, before.double(), 0.5)) / 7
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    (expected_grad,) = torch.autograd.grad(expected, reference_embeddings)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)
    updated = reference_ema(before.double(), embeddings.detach().double(), labels, 0.7)
    torch.testing.assert_close(loss.prototypes.double(), updated, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.prototypes[3], before[3])  # absent cluster unchanged


def test_eval_mode_does_not_update_and_prototypes_are_a_buffer():
    embeddings, labels, centroids = make_case(1)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH)
    loss.init_prototypes(centroids)
    before = loss.prototypes.clone()
    loss.eval()
    loss(embeddings, labels)
    torch.testing.assert_close(loss.prototypes, before)
    assert list(loss.parameters()) == []
    restored = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH)
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored.prototypes, before)


def test_miner_weights_and_sum_reducer():
    embeddings, labels, centroids = make_case(2)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, temperature=0.2, reducer=SumReducer())
    loss.init_prototypes(centroids)
    loss.eval()
    per_sample = reference_losses(embeddings, labels, loss.prototypes, 0.2)
    # pml weights each sample by its count in the tuple over the largest count: 0 x3, 1 x1, 3 x2.
    triplets = (torch.tensor([0, 0]), torch.tensor([1, 0]), torch.tensor([3, 3]))
    weights = {0: 1.0, 1: 1 / 3, 3: 2 / 3}
    expected = sum(weights.get(i, 0.0) * per_sample[i] for i in range(7))
    torch.testing.assert_close(loss(embeddings, labels, triplets), expected, rtol=1e-5, atol=1e-6)


def test_clear_errors():
    embeddings, labels, _ = make_case()
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH)
    with pytest.raises(ValueError, match="decode_domain_labels"):
        loss(embeddings, labels + NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes x embedding_size"):
        loss.init_prototypes(torch.randn(NUM_CLASSES + 1, WIDTH))
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        loss(embeddings, labels, ref_emb=embeddings.clone(), ref_labels=labels)


def test_non_finite_batch_leaves_the_prototypes_unchanged_and_warns_once():
    embeddings, labels, centroids = make_case(5)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, momentum=0.5)
    loss.init_prototypes(centroids)
    before = loss.prototypes.clone()
    poisoned = embeddings.clone()
    poisoned[3, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite .*embeddings; the prototypes were not updated"):
        value = loss(poisoned, labels)
    assert not torch.isfinite(value)  # the loss stays non-finite, for the trainer to report
    assert torch.equal(loss.prototypes, before)
    poisoned[3, 1] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already
        loss(poisoned, labels)
        loss.update_prototypes(poisoned, labels)
    assert torch.equal(loss.prototypes, before)
    # The next finite batch still moves them by the plain EMA step.
    loss(embeddings, labels)
    updated = reference_ema(before.double(), embeddings.double(), labels, 0.5)
    torch.testing.assert_close(loss.prototypes.double(), updated, rtol=1e-5, atol=1e-6)


def test_non_finite_centroids_are_refused():
    centroids = make_case()[2]
    centroids[2, 0] = float("nan")
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH)
    before = loss.prototypes.clone()
    with pytest.raises(ValueError, match="centroids contain NaN or inf"):
        loss.init_prototypes(centroids)
    assert torch.equal(loss.prototypes, before)


@pytest.mark.parametrize("train", [True, False])
def test_empty_batch_gives_a_finite_zero_loss_on_the_graph(train):
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH).train(train)
    before = loss.prototypes.clone()
    embeddings = torch.zeros(0, WIDTH, requires_grad=True)
    value = loss(embeddings, torch.zeros(0, dtype=torch.long))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(embeddings.grad, torch.zeros(0, WIDTH))
    assert torch.equal(loss.prototypes, before)


@pytest.mark.parametrize("temperature", [0.0, -0.05, float("nan"), float("inf")])
def test_non_positive_or_non_finite_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0.*such as 0.05"):
        PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, temperature=temperature)


def rank_batch(rank):
    """Rank ``rank``'s own embeddings and labels (cluster 3 only on rank 1)."""
    embeddings, labels, _ = make_case(10 + rank)
    return embeddings, torch.where(labels == 1, 3, labels) if rank else labels


def wrapped_loss_on_rank(rank, world_size):
    embeddings, labels = rank_batch(rank)
    embeddings.requires_grad_(True)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, momentum=0.5)
    loss.init_prototypes(make_case(3)[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper warns when it finds no process group
        value = DistributedLossWrapper(loss)(embeddings, labels)
    value.backward()
    return value.detach(), embeddings.grad, loss.prototypes


def test_distributed_wrapper_equals_one_process_over_the_gathered_batch(two_gloo_ranks):
    results = two_gloo_ranks(wrapped_loss_on_rank)
    batches = [rank_batch(rank) for rank in range(len(results))]
    embeddings = torch.cat([b[0] for b in batches]).requires_grad_(True)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, momentum=0.5)
    loss.init_prototypes(make_case(3)[2])
    expected = loss(embeddings, torch.cat([b[1] for b in batches]))
    (grad,) = torch.autograd.grad(expected, embeddings)
    size = len(batches[0][0])
    for rank, (value, rank_grad, prototypes) in enumerate(results):
        # scaled by the world size, so that DDP's mean over ranks is the global batch's gradient
        torch.testing.assert_close(value, len(results) * expected.detach())
        torch.testing.assert_close(rank_grad, len(results) * grad[rank * size:(rank + 1) * size])
        # every rank moved its prototypes with the whole gathered batch
        torch.testing.assert_close(prototypes, loss.prototypes)


def test_finite_and_float32_inside_autocast_and_half_inputs():
    embeddings, labels, centroids = make_case(4)
    loss = PrototypeCrossEntropyLoss(NUM_CLASSES, WIDTH, temperature=0.05)
    loss.init_prototypes(centroids)
    loss.eval()
    full = loss(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = loss(embeddings, labels)
    torch.testing.assert_close(autocast_value, full, rtol=1e-6, atol=1e-6)
    loss.train()
    for dtype in (torch.float16, torch.bfloat16):
        half = loss(embeddings.to(dtype), labels)
        assert half.dtype == torch.float32 and torch.isfinite(half)
        assert loss.prototypes.dtype == torch.float32 and torch.isfinite(loss.prototypes).all()
