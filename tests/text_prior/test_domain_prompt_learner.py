import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a download attempt must fail fast, not hang

import functools  # noqa: E402

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tpsnet_plugin  # noqa: E402,F401

# isort: split
import open_clip  # noqa: E402
from open_clip.model import CustomTextCLIP  # noqa: E402

from tpsnet_plugin.losses import PromptContrastiveLoss  # noqa: E402
from tpsnet_plugin.text_prior import TINY_CLIP_MODEL, DomainPromptLearner  # noqa: E402

D, C, M = 2, 3, 4


@pytest.fixture(scope="module")
def learner():
    torch.manual_seed(0)
    return DomainPromptLearner(TINY_CLIP_MODEL, num_domains=D, num_clusters=C, num_context=M)


def placeholder_embedding(learner):
    """Token embedding of the word "X", as the real tokenizer and embedding table produce it."""
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_MODEL)
    token_id = tokenizer(["X"])[0, 1]  # [SOT, x, EOT, 0, ...]
    return learner.clip.token_embedding.weight[token_id]


def test_only_context_is_trainable(learner):
    trainable = [p for p in learner.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is learner.context
    width = learner.clip.token_embedding.embedding_dim
    assert sum(p.numel() for p in trainable) == D * C * M * width
    assert all(not p.requires_grad for p in learner.clip.parameters())
    learner.train()
    assert learner.training and not learner.clip.training
    features = learner()
    features.sum().backward()
    assert learner.context.grad is not None and learner.context.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.clip.parameters())
    learner.context.grad = None


def test_output_shape_and_distinct_prompts(learner):
    features = learner()
    assert features.shape == (D, C, learner.embed_dim) and learner.embed_dim == 64
    flat = F.normalize(features.flatten(0, 1), dim=1)
    similarity = flat @ flat.t()
    off_diagonal = similarity[~torch.eye(D * C, dtype=torch.bool)]
    assert off_diagonal.max() < 1 - 1e-4  # every (domain, cluster) prompt differs


def test_injection_matches_open_clip_encode_text(learner):
    """With every context vector equal to the embedding of "X", the prompt is the plain text."""
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_MODEL)
    expected = learner.clip.encode_text(tokenizer(["An image of a X X X X."]))[0]
    saved = learner.context.detach().clone()
    try:
        with torch.no_grad():
            learner.context.copy_(placeholder_embedding(learner).expand_as(learner.context))
            features = learner()
            for d in range(D):
                for c in range(C):
                    torch.testing.assert_close(features[d, c], expected, rtol=1e-5, atol=1e-5)
            # Changing one prompt's context changes that prompt's features only.
            learner.context[1, 2, 0, 0] += 0.5
            changed = learner()
        assert not torch.allclose(changed[1, 2], features[1, 2], atol=1e-4)
        torch.testing.assert_close(changed[0], features[0])
        torch.testing.assert_close(changed[1, :2], features[1, :2])
    finally:
        with torch.no_grad():
            learner.context.copy_(saved)


def test_forward_with_labels_selects_prompts(learner):
    labels = torch.tensor([5, 0, 5, 3])
    with torch.no_grad():
        torch.testing.assert_close(learner(labels), learner().flatten(0, 1)[labels],
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        learner(torch.tensor([6]))


def test_custom_text_clip_is_supported(monkeypatch):
    monkeypatch.setattr(open_clip, "create_model_and_transforms",
                        functools.partial(open_clip.create_model_and_transforms,
                                          force_custom_text=True))
    custom = DomainPromptLearner(TINY_CLIP_MODEL, num_domains=1, num_clusters=2, num_context=M)
    assert isinstance(custom.clip, CustomTextCLIP)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_MODEL)
    expected = custom.clip.encode_text(tokenizer(["An image of a X X X X."]))[0]
    token_id = tokenizer(["X"])[0, 1]
    with torch.no_grad():
        placeholder = custom.clip.text.token_embedding.weight[token_id]
        custom.context.copy_(placeholder.expand_as(custom.context))
        torch.testing.assert_close(custom()[0, 1], expected, rtol=1e-5, atol=1e-5)


def test_local_checkpoint_path_loads_weights(tmp_path):
    source = open_clip.create_model(TINY_CLIP_MODEL)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), path)
    loaded = DomainPromptLearner(TINY_CLIP_MODEL, pretrained=str(path), num_domains=1,
                                 num_clusters=2)
    expected = source.state_dict()
    got = loaded.clip.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert loaded.logit_scale == pytest.approx(source.logit_scale.exp().item())


def test_offline_pretrained_tag_explains_local_file(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"model.clip_pretrained=/path/to/open_clip_pytorch_model.bin") as error:
        DomainPromptLearner("ViT-B-16", pretrained="openai")
    assert "\n" not in str(error.value)  # one line under the command line's contract
    assert error.value.option == "model.clip_pretrained"


def test_unknown_names_give_close_matches():
    with pytest.raises(ValueError, match="ViT-B-16"):
        DomainPromptLearner("ViT-B-61")
    with pytest.raises(ValueError, match="neither an existing file nor a known open_clip tag"):
        DomainPromptLearner(TINY_CLIP_MODEL, pretrained="no-such-tag")
    with pytest.raises(ValueError, match="must not contain the word 'X'"):
        DomainPromptLearner(TINY_CLIP_MODEL, template="X marks the", num_clusters=1)


def test_encode_images(learner):
    torch.manual_seed(1)
    images = torch.rand(5, 3, *learner.image_size, requires_grad=True)
    features = learner.encode_images(images, batch_size=2)
    assert features.shape == (5, learner.embed_dim) and not features.requires_grad
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = learner.clip.encode_image((images - mean) / std)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # Other sizes and grayscale are resized / repeated to the tower's input.
    gray = torch.rand(3, 1, 28, 40)
    assert learner.encode_images(gray).shape == (3, learner.embed_dim)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        learner.encode_images(torch.rand(3, 28, 28))
    with pytest.raises(ValueError, match="divide uint8 images by 255"):
        learner.encode_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_prompt_loss_trains_the_context():
    torch.manual_seed(2)
    learner = DomainPromptLearner(TINY_CLIP_MODEL, num_domains=D, num_clusters=C)
    images = learner.encode_images(torch.rand(12, 3, 32, 32))
    labels = torch.arange(12) % (D * C)
    loss_fn = PromptContrastiveLoss(logit_scale=learner.logit_scale)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=0.05)
    clip_before = {k: v.clone() for k, v in learner.clip.state_dict().items()}
    losses = []
    for _ in range(8):
        loss = loss_fn(images, labels, ref_emb=learner(labels), ref_labels=labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for key, value in learner.clip.state_dict().items():
        torch.testing.assert_close(value, clip_before[key], rtol=0, atol=0)
