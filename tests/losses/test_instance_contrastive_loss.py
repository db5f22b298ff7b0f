import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss
from pytorch_metric_learning.reducers import ClassWeightedReducer
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.losses import InstanceContrastiveLoss


def reference_losses(view1, view2, temperature, domains=None):
    """Loop-based NT-Xent per anchor view; negatives limited to the anchor's domain if given."""
    views = torch.cat([view1, view2])
    num = len(view1)
    losses = []
    for anchor in range(2 * num):
        partner = (anchor + num) % (2 * num)
        positive = torch.exp(
            F.cosine_similarity(views[anchor], views[partner], dim=0) / temperature)
        negatives = 0.0
        for other in range(2 * num):
            if other in (anchor, partner):
                continue
            if domains is not None and domains[other % num] != domains[anchor % num]:
                continue
            negatives = negatives + torch.exp(
                F.cosine_similarity(views[anchor], views[other], dim=0) / temperature)
        losses.append(-torch.log(positive / (positive + negatives)))
    return losses


def make_views(num, width=6, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(num, width, generator=generator, dtype=dtype, requires_grad=True),
            torch.randn(num, width, generator=generator, dtype=dtype, requires_grad=True))


@pytest.mark.parametrize("num,temperature", [(2, 0.1), (5, 0.07), (16, 0.5), (33, 0.2)])
def test_equals_pml_self_supervised_ntxent(num, temperature):
    view1, view2 = make_views(num, seed=num)
    value = InstanceContrastiveLoss(temperature)(view1, ref_emb=view2)
    expected = SelfSupervisedLoss(NTXentLoss(temperature=temperature))(view1, view2)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(value, [view1, view2]),
                         torch.autograd.grad(expected, [view1, view2])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("within_domain", [False, True])
def test_value_and_gradient_match_loop_reference(within_domain):
    view1, view2 = make_views(6, seed=1, dtype=torch.float64)
    domains = torch.tensor([0, 1, 0, 2, 1, 0])
    value = InstanceContrastiveLoss(0.3, within_domain=within_domain)(view1, domains, ref_emb=view2)
    per_anchor = reference_losses(view1, view2, 0.3, domains if within_domain else None)
    expected = sum(per_anchor) / len(per_anchor)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(value, [view1, view2]),
                         torch.autograd.grad(expected, [view1, view2])):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_within_domain_single_domain_equals_plain():
    view1, view2 = make_views(7, seed=2)
    plain = InstanceContrastiveLoss(0.1)(view1, ref_emb=view2)
    single = InstanceContrastiveLoss(0.1, within_domain=True)(
        view1, torch.zeros(7, dtype=torch.long), ref_emb=view2)
    torch.testing.assert_close(single, plain)


def test_class_weighted_reducer_weights_rows_by_domain():
    view1, view2 = make_views(5, seed=3, dtype=torch.float64)
    domains = torch.tensor([0, 1, 1, 0, 1])
    weights = torch.tensor([1.0, 3.0])
    loss = InstanceContrastiveLoss(0.2, reducer=ClassWeightedReducer(weights))
    per_anchor = reference_losses(view1, view2, 0.2)
    expected = sum(weights[domains[a % 5]] * per_anchor[a] for a in range(10)) / 10
    torch.testing.assert_close(loss(view1, domains, ref_emb=view2).double(), expected,
                               rtol=1e-5, atol=1e-6)


def test_clear_errors():
    view1, view2 = make_views(4)
    with pytest.raises(ValueError, match="second view"):
        InstanceContrastiveLoss()(view1)
    with pytest.raises(ValueError, match="same shape"):
        InstanceContrastiveLoss()(view1, ref_emb=view2[:3])
    with pytest.raises(ValueError, match="domain id of each sample"):
        InstanceContrastiveLoss(within_domain=True)(view1, ref_emb=view2)
    with pytest.raises(ValueError, match="ref_labels must be None or equal"):
        InstanceContrastiveLoss()(view1, torch.zeros(4, dtype=torch.long), ref_emb=view2,
                                  ref_labels=torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("within_domain", [False, True])
def test_empty_batch_gives_a_finite_zero_loss_on_the_graph(within_domain):
    view1, view2 = (torch.zeros(0, 6, requires_grad=True) for _ in range(2))
    domains = torch.zeros(0, dtype=torch.long)
    value = InstanceContrastiveLoss(0.1, within_domain=within_domain)(view1, domains, ref_emb=view2)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(view1.grad, torch.zeros(0, 6))


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_or_non_finite_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0.*such as 0.1"):
        InstanceContrastiveLoss(temperature)


def rank_batch(rank):
    """Rank ``rank``'s own two views and domains."""
    view1, view2 = make_views(6, seed=10 + rank, dtype=torch.float64)
    return view1, view2, torch.tensor([0, 1, 0, 1, 1, 1]).roll(rank)


def wrapped_loss_on_rank(rank, world_size):
    view1, view2, domains = rank_batch(rank)
    loss = InstanceContrastiveLoss(0.1, within_domain=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper warns when it finds no process group
        value = DistributedLossWrapper(loss)(view1, domains, ref_emb=view2)
    value.backward()
    return value.detach(), view1.grad, view2.grad


def test_distributed_wrapper_equals_one_process_over_the_gathered_batch(two_gloo_ranks):
    results = two_gloo_ranks(wrapped_loss_on_rank)
    batches = [rank_batch(rank) for rank in range(len(results))]
    view1, view2, domains = (torch.cat(parts) for parts in zip(*batches))
    view1, view2 = (v.detach().requires_grad_(True) for v in (view1, view2))
    expected = InstanceContrastiveLoss(0.1, within_domain=True)(view1, domains, ref_emb=view2)
    grads = torch.autograd.grad(expected, [view1, view2])
    rows = [slice(rank * 6, (rank + 1) * 6) for rank in range(len(results))]
    for rank, (value, *rank_grads) in enumerate(results):
        # scaled by the world size, so that DDP's mean over ranks is the global batch's gradient
        torch.testing.assert_close(value, len(results) * expected.detach())
        for got, full in zip(rank_grads, grads):
            torch.testing.assert_close(got, len(results) * full[rows[rank]])


def test_finite_and_float32_inside_autocast_and_half_inputs():
    view1, view2 = (v.detach() for v in make_views(8, seed=5))
    loss = InstanceContrastiveLoss(0.05)
    full = loss(view1, ref_emb=view2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = loss(view1, ref_emb=view2)
    torch.testing.assert_close(autocast_value, full, rtol=1e-6, atol=1e-6)
    for dtype in (torch.float16, torch.bfloat16):
        half = loss(view1.to(dtype), ref_emb=view2.to(dtype))
        assert half.dtype == torch.float32 and torch.isfinite(half)
        rounded = loss(view1.to(dtype).float(), ref_emb=view2.to(dtype).float())
        torch.testing.assert_close(half, rounded)
