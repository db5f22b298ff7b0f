import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.losses import ImageTextCrossEntropyLoss

NUM_DOMAINS, NUM_CLUSTERS = 3, 4


def reference_losses(embeddings, labels, text, scale, smoothing):
    """Loop-based per-sample smoothed cross-entropy over the sample's own domain's prompts."""
    losses = []
    for i in range(len(embeddings)):
        domain, cluster = divmod(int(labels[i]), NUM_CLUSTERS)
        logits = [scale * F.cosine_similarity(embeddings[i], text[domain, c], dim=0)
                  for c in range(NUM_CLUSTERS)]
        log_norm = torch.log(sum(torch.exp(logit) for logit in logits))
        loss = 0.0
        for c in range(NUM_CLUSTERS):
            target = (1 - smoothing) * (c == cluster) + smoothing / NUM_CLUSTERS
            loss = loss - target * (logits[c] - log_norm)
        losses.append(loss)
    return losses


def make_case(seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(6, 5, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 3, 5, 6, 11, 9])  # every domain, mixed clusters
    text = torch.randn(NUM_DOMAINS, NUM_CLUSTERS, 5, generator=generator, dtype=dtype)
    return embeddings, labels, text


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_value_and_gradient_match_loop_reference(smoothing):
    embeddings, labels, text = make_case()
    embeddings.requires_grad_(True)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, label_smoothing=smoothing, logit_scale=7.0)
    loss.set_text_features(text)
    value = loss(embeddings, labels)
    expected = sum(reference_losses(embeddings, labels, text, 7.0, smoothing)) / len(labels)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(value, embeddings)[0].double(),
                               torch.autograd.grad(expected, embeddings)[0], rtol=1e-4, atol=1e-6)


def test_flat_text_features_equal_3d_and_sum_reducer():
    embeddings, labels, text = make_case(1)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, logit_scale=3.0, reducer=SumReducer())
    loss.set_text_features(text.flatten(0, 1))  # row d*C + c
    torch.testing.assert_close(loss.text_features, text.float())
    expected = sum(reference_losses(embeddings, labels, text, 3.0, 0.1))
    torch.testing.assert_close(loss(embeddings, labels).double(), expected, rtol=1e-5, atol=1e-6)


def test_text_features_are_frozen_and_not_in_state_dict():
    _, _, text = make_case(2)
    text.requires_grad_(True)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    loss.set_text_features(text)
    assert not loss.text_features.requires_grad
    assert loss.state_dict() == {} and not list(loss.buffers())  # the model saves them, not the loss


def test_a_shared_holder_gives_the_loss_what_the_model_holds():
    from tpsnet_plugin.text_prior import PromptFeatures

    embeddings, labels, text = make_case(2)
    shared = PromptFeatures()
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, prompt_features=shared)
    with pytest.raises(RuntimeError, match="set_text_features"):
        loss(embeddings, labels)
    shared.set(text.float())  # what set_text_features stores
    own = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    own.set_text_features(text)
    assert torch.equal(loss(embeddings, labels), own(embeddings, labels))
    shared.set(text[:, :3].float())
    with pytest.raises(ValueError, match=f"num_clusters={NUM_CLUSTERS}"):
        loss(embeddings, labels)


def test_clear_errors():
    embeddings, labels, text = make_case()
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    with pytest.raises(RuntimeError, match="set_text_features"):
        loss(embeddings, labels)
    with pytest.raises(ValueError, match="multiple of num_clusters"):
        loss.set_text_features(torch.randn(7, 5))
    with pytest.raises(ValueError, match="D x 4 x e"):
        loss.set_text_features(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageTextCrossEntropyLoss(NUM_CLUSTERS, label_smoothing=1.0)


def test_labels_beyond_the_text_features_raise_naming_the_labels_and_prompts():
    embeddings, labels, text = make_case()
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    loss.set_text_features(text[:2])  # 2 domains x 4 clusters: labels 9 and 11 (domain 2) match none
    with pytest.raises(ValueError, match=r"labels \[9, 11\] match none of the 8 prompts "
                                         r"\(2 domains x 4 clusters\).*domain \* 4 \+ cluster below 8"):
        loss(embeddings, labels)
    loss.set_text_features(text)
    assert torch.isfinite(loss(embeddings, labels))


def test_empty_batch_gives_a_finite_zero_loss_on_the_graph():
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    loss.set_text_features(make_case()[2])
    embeddings = torch.zeros(0, 5, requires_grad=True)
    value = loss(embeddings, torch.zeros(0, dtype=torch.long))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(embeddings.grad, torch.zeros(0, 5))


@pytest.mark.parametrize("scale", [0.0, -100.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_logit_scale_is_refused(scale):
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0.*exp\(logit_scale\)"):
        ImageTextCrossEntropyLoss(NUM_CLUSTERS, logit_scale=scale)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_text_features_are_refused(bad):
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS)
    text = make_case()[2]
    text[1, 2, 0] = bad
    with pytest.raises(ValueError, match="text_features contain NaN or inf"):
        loss.set_text_features(text)
    assert loss.text_features is None


def rank_batch(rank):
    """Rank ``rank``'s own embeddings and labels; the text features are shared."""
    embeddings, labels, _ = make_case(10 + rank)
    return embeddings, labels.roll(2 * rank)


def wrapped_loss_on_rank(rank, world_size):
    embeddings, labels = rank_batch(rank)
    embeddings.requires_grad_(True)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, logit_scale=10.0)
    loss.set_text_features(make_case(3)[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper warns when it finds no process group
        value = DistributedLossWrapper(loss)(embeddings, labels)
    value.backward()
    return value.detach(), embeddings.grad


def test_distributed_wrapper_equals_one_process_over_the_gathered_batch(two_gloo_ranks):
    results = two_gloo_ranks(wrapped_loss_on_rank)
    batches = [rank_batch(rank) for rank in range(len(results))]
    embeddings = torch.cat([b[0] for b in batches]).requires_grad_(True)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, logit_scale=10.0)
    loss.set_text_features(make_case(3)[2])
    expected = loss(embeddings, torch.cat([b[1] for b in batches]))
    (grad,) = torch.autograd.grad(expected, embeddings)
    size = len(batches[0][0])
    for rank, (value, rank_grad) in enumerate(results):
        # scaled by the world size, so that DDP's mean over ranks is the global batch's gradient
        torch.testing.assert_close(value, len(results) * expected.detach())
        torch.testing.assert_close(rank_grad, len(results) * grad[rank * size:(rank + 1) * size])


def test_finite_and_float32_inside_autocast_and_half_inputs():
    embeddings, labels, text = make_case(4, dtype=torch.float32)
    loss = ImageTextCrossEntropyLoss(NUM_CLUSTERS, logit_scale=100.0)
    loss.set_text_features(text)
    full = loss(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = loss(embeddings, labels)
    torch.testing.assert_close(autocast_value, full, rtol=1e-6, atol=1e-6)
    for dtype in (torch.float16, torch.bfloat16):
        half = loss(embeddings.to(dtype), labels)
        assert half.dtype == torch.float32 and torch.isfinite(half)
        torch.testing.assert_close(half, loss(embeddings.to(dtype).float(), labels))
