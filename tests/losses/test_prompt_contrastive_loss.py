import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import DoNothingReducer, SumReducer
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.losses import PromptContrastiveLoss


def reference_terms(images, labels, texts, text_labels, scale):
    """Loop-based per-row i2t and t2i SupCon losses (rows without positives left out)."""
    logits = [[scale * F.cosine_similarity(v, t, dim=0) for t in texts] for v in images]
    i2t, t2i = [], []
    for i in range(len(images)):
        positives = [k for k in range(len(texts)) if text_labels[k] == labels[i]]
        if positives:
            log_norm = torch.log(sum(torch.exp(logits[i][k]) for k in range(len(texts))))
            i2t.append(-sum(logits[i][k] - log_norm for k in positives) / len(positives))
    for k in range(len(texts)):
        positives = [i for i in range(len(images)) if labels[i] == text_labels[k]]
        if positives:
            log_norm = torch.log(sum(torch.exp(logits[i][k]) for i in range(len(images))))
            t2i.append(-sum(logits[i][k] - log_norm for i in positives) / len(positives))
    return i2t, t2i


def make_case(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    # D=2, C=3: prompts 0..5; prompt 4 is absent from the batch, label 2 appears three times.
    labels = torch.tensor([0, 2, 2, 5, 1, 2, 3])
    texts = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    return images, labels, texts


@pytest.mark.parametrize("scale", [1.0, 14.3])
def test_all_prompts_value_and_gradient_match_loop_reference(scale):
    images, labels, texts = make_case()
    text_labels = torch.arange(6)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    value = PromptContrastiveLoss(logit_scale=scale)(images, labels, ref_emb=texts,
                                                     ref_labels=text_labels)
    grads = torch.autograd.grad(value, [images, texts])
    i2t, t2i = reference_terms(images, labels, texts, text_labels, scale)
    assert len(i2t) == 7 and len(t2i) == 5  # prompt 4 has no image, so no t2i term
    expected = sum(i2t) / len(i2t) + sum(t2i) / len(t2i)
    expected_grads = torch.autograd.grad(expected, [images, texts])
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_per_sample_prompts_and_missing_positive_match_loop_reference():
    images, labels, texts = make_case(1)
    # Per-sample prompt rows, plus image 3 (label 5) has no prompt row: its i2t term is left out.
    keep = labels != 5
    ref = texts[labels[keep]].clone().requires_grad_(True)
    images.requires_grad_(True)
    value = PromptContrastiveLoss(logit_scale=5.0)(images, labels, ref_emb=ref,
                                                   ref_labels=labels[keep])
    i2t, t2i = reference_terms(images, labels, ref, labels[keep], 5.0)
    assert len(i2t) == 6 and len(t2i) == 6
    expected = sum(i2t) / len(i2t) + sum(t2i) / len(t2i)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(value, [images, ref]),
                         torch.autograd.grad(expected, [images, ref])):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_sum_reducer_sums_every_row():
    images, labels, texts = make_case(2)
    value = PromptContrastiveLoss(logit_scale=3.0, reducer=SumReducer())(
        images, labels, ref_emb=texts, ref_labels=torch.arange(6))
    i2t, t2i = reference_terms(images, labels, texts, torch.arange(6), 3.0)
    torch.testing.assert_close(value.double(), sum(i2t) + sum(t2i), rtol=1e-5, atol=1e-6)


def test_requires_prompt_features_and_labels():
    images, labels, texts = make_case()
    loss = PromptContrastiveLoss()
    with pytest.raises(ValueError, match="ref_emb=text_features"):
        loss(images, labels)
    with pytest.raises(ValueError, match="ref_labels"):
        loss(images, labels, ref_emb=texts)


def test_labels_matching_no_prompt_raise_naming_the_labels_and_prompts():
    images, labels, texts = make_case()
    loss = PromptContrastiveLoss(logit_scale=10.0)
    # All 6 prompts (labels 0..5), images labelled 6..11: no pair is positive, the loss would be 0.
    with pytest.raises(ValueError, match=r"labels \[6, 7, 8, 9, 11\] match none of the 6 "
                                         r"prompts in ref_labels.*occur in ref_labels"):
        loss(images, labels + 6, ref_emb=texts, ref_labels=torch.arange(6))
    with pytest.raises(ValueError, match="match none of the 0 prompts"):
        loss(images, labels, ref_emb=texts[:0], ref_labels=torch.arange(0))


@pytest.mark.parametrize("all_prompts", [True, False])
def test_empty_batch_gives_a_finite_zero_loss_on_the_graph_of_images_and_prompts(all_prompts):
    # Stage 1: frozen image features (no gradient); the prompts are what is trained.
    images = torch.zeros(0, 5)
    texts = make_case()[2].requires_grad_(True)
    labels = torch.zeros(0, dtype=torch.long)
    ref, ref_labels = (texts, torch.arange(6)) if all_prompts else (texts[labels], labels)
    value = PromptContrastiveLoss(logit_scale=10.0)(images, labels, ref_emb=ref, ref_labels=ref_labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(texts.grad, torch.zeros_like(texts))
    images.requires_grad_(True)
    value = PromptContrastiveLoss(logit_scale=10.0)(images, labels, ref_emb=ref.detach(),
                                                    ref_labels=ref_labels)
    (grad,) = torch.autograd.grad(value, images)
    assert value.item() == 0.0 and grad.shape == (0, 5)


@pytest.mark.parametrize("scale", [0.0, -14.3, float("nan"), float("inf")])
def test_non_positive_or_non_finite_logit_scale_is_refused(scale):
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0.*exp\(logit_scale\)"):
        PromptContrastiveLoss(logit_scale=scale)


def rank_batch(rank):
    """Rank ``rank``'s own images and labels; the prompt table (D·C rows) is shared."""
    images, labels, _ = make_case(10 + rank)
    return images, labels.roll(3 * rank)


def wrapped_loss_on_rank(rank, world_size):
    images, labels = rank_batch(rank)
    table = make_case(3)[2].requires_grad_(True)
    images.requires_grad_(True)
    loss = PromptContrastiveLoss(logit_scale=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the wrapper warns when it finds no process group
        # per-sample prompts, the documented convention under the wrapper
        value = DistributedLossWrapper(loss)(images, labels, ref_emb=table[labels], ref_labels=labels)
    value.backward()
    return value.detach(), images.grad, table.grad


def test_distributed_wrapper_equals_one_process_over_the_gathered_batch(two_gloo_ranks):
    results = two_gloo_ranks(wrapped_loss_on_rank)
    batches = [rank_batch(rank) for rank in range(len(results))]
    images = torch.cat([b[0] for b in batches]).requires_grad_(True)
    labels = torch.cat([b[1] for b in batches])
    # one copy of the prompt table per rank: its gradient through that rank's rows
    tables = [make_case(3)[2].requires_grad_(True) for _ in batches]
    ref = torch.cat([table[b[1]] for table, b in zip(tables, batches)])
    expected = PromptContrastiveLoss(logit_scale=10.0)(images, labels, ref_emb=ref, ref_labels=labels)
    image_grad, *table_grads = torch.autograd.grad(expected, [images, *tables])
    size = len(batches[0][0])
    for rank, (value, rank_image_grad, rank_table_grad) in enumerate(results):
        # scaled by the world size, so that DDP's mean over ranks is the global batch's gradient
        # (float32 inside: the gathered rows come in another order than here)
        close = dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value, len(results) * expected.detach(), **close)
        torch.testing.assert_close(rank_image_grad,
                                   len(results) * image_grad[rank * size:(rank + 1) * size], **close)
        torch.testing.assert_close(rank_table_grad, len(results) * table_grads[rank], **close)


def test_finite_and_float32_inside_autocast_and_half_inputs():
    images, labels, texts = (x.float() if x.is_floating_point() else x for x in make_case(4))
    loss = PromptContrastiveLoss(logit_scale=100.0)
    full = loss(images, labels, ref_emb=texts, ref_labels=torch.arange(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = loss(images, labels, ref_emb=texts, ref_labels=torch.arange(6))
    # Computed in float32 inside: bfloat16 matmuls would be off by ~1e-2 at scale 100.
    torch.testing.assert_close(autocast_value.float(), full, rtol=1e-6, atol=1e-6)
    # Half inputs: the per-row losses are float32 (pml then sums the two terms in the input dtype).
    rows = PromptContrastiveLoss(logit_scale=100.0, reducer=DoNothingReducer())
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.isfinite(loss(images.to(dtype), labels, ref_emb=texts.to(dtype),
                                   ref_labels=torch.arange(6)))
        half = rows(images.to(dtype), labels, ref_emb=texts.to(dtype), ref_labels=torch.arange(6))
        rounded = rows(images.to(dtype).float(), labels, ref_emb=texts.to(dtype).float(),
                       ref_labels=torch.arange(6))
        for name in ("i2t_loss", "t2i_loss"):
            assert half[name]["losses"].dtype == torch.float32
            torch.testing.assert_close(half[name]["losses"], rounded[name]["losses"])
