"""Tests for TPSNet (tiny backbones, 32 px images)."""

import math

import pytest
import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401

# isort: split
import timm

from tpsnet_plugin.backbones import PhasePriorBackbone
from tpsnet_plugin.models import TPSNet

EMBED, HEADS, DOMAINS, CLUSTERS = 32, 4, 2, 5


def make_model(text_features="random", seed=0, **kwargs):
    torch.manual_seed(seed)
    backbone = PhasePriorBackbone(
        "small_cnn", "small_cnn", embed_dim=EMBED, num_heads=HEADS,
        rgb_kwargs={"widths": (8, 16)}, phase_kwargs={"widths": (8, 16)},
    )
    if isinstance(text_features, str):
        text_features = F.normalize(torch.randn(DOMAINS, CLUSTERS, EMBED), dim=-1)
    return TPSNet(backbone, text_features, **{"num_heads": HEADS, **kwargs})


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_shapes_with_and_without_domains(images):
    model = make_model().eval()
    assert model.embed_dim == EMBED and (model.num_domains, model.num_clusters) == (DOMAINS, CLUSTERS)
    with_domains = model(images, domains=torch.tensor([0, 1, 1]), return_dict=True)
    assert set(with_domains) == {"embedding", "rgb", "phase", "fused", "synergy", "weights"}
    for key in ("embedding", "rgb", "phase", "fused", "synergy"):
        assert with_domains[key].shape == (3, EMBED), key
    assert with_domains["weights"].shape == (3, CLUSTERS)
    without = model(images, return_dict=True)
    assert without["weights"].shape == (3, DOMAINS * CLUSTERS)
    torch.testing.assert_close(with_domains["weights"].sum(1), torch.ones(3))
    torch.testing.assert_close(model(images, [0, 1, 1]), with_domains["embedding"])
    # the domain changes the queries, hence the embedding
    assert not torch.allclose(model(images, [1, 0, 0]), with_domains["embedding"])


def test_embedding_is_l2_normalised(images):
    model = make_model()
    for domains in (None, [1, 0, 1]):
        torch.testing.assert_close(model(images, domains).norm(dim=1), torch.ones(3))
        out = model(images, domains, return_dict=True)
        torch.testing.assert_close(out["embedding"], F.normalize(out["synergy"], dim=1))


def brute_force_synergy(model, tokens, fused, queries):
    """Synergy of one sample from the module's own weights, head by head, prompt by prompt."""
    attention = model.cross_attn
    e, heads = model.embed_dim, attention.num_heads
    head_dim = e // heads
    w_q, w_k, w_v = attention.in_proj_weight.split(e)
    b_q, b_k, b_v = attention.in_proj_bias.split(e)
    keys = tokens @ w_k.T + b_k
    values = tokens @ w_v.T + b_v
    attended = []
    for query in queries:
        q = query @ w_q.T + b_q
        head_outputs = []
        for h in range(heads):
            part = slice(h * head_dim, (h + 1) * head_dim)
            scores = torch.tensor([q[part] @ k[part] / math.sqrt(head_dim) for k in keys])
            probabilities = torch.softmax(scores, dim=0)
            head_outputs.append(sum(p * v[part] for p, v in zip(probabilities, values)))
        attended.append(attention.out_proj(torch.cat(head_outputs)))
    cosines = torch.tensor([
        float(fused @ query / (fused.norm() * query.norm())) for query in queries
    ])
    weights = torch.softmax(cosines / model.weight_temperature, dim=0)
    mixed = fused + sum(w * a for w, a in zip(weights, attended))
    synergy = F.layer_norm(mixed, (e,), model.norm.weight, model.norm.bias)
    return synergy, weights


@pytest.mark.parametrize("domains", [None, [1, 0, 1]])
def test_synergy_matches_brute_force(images, domains):
    model = make_model(weight_temperature=0.5).eval()
    with torch.no_grad():
        out = model(images, domains, return_dict=True)
        parts = model.backbone.forward_parts(images)
        for b in range(images.shape[0]):
            if domains is None:
                queries = model.text_features.reshape(-1, EMBED)
            else:
                queries = model.text_features[domains[b]]
            synergy, weights = brute_force_synergy(model, parts["tokens"][b], parts["fused"][b], queries)
            torch.testing.assert_close(out["weights"][b], weights, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out["synergy"][b], synergy, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out["fused"][b], parts["fused"][b])


def test_text_prior_off(images):
    model = make_model(text_features=None)
    assert model.text_features is None and model.num_clusters is None
    assert "prompt_features.features" not in model.state_dict()
    out = model(images, domains=[0, 1, 0], return_dict=True)
    assert out["synergy"] is None and out["weights"] is None
    torch.testing.assert_close(out["embedding"], F.normalize(out["fused"], dim=1))
    out["embedding"].sum().backward()
    assert all(p.grad is None for p in model.cross_attn.parameters())


def test_set_text_features_replaces_and_validates(images):
    model = make_model(text_features=None)
    new = torch.randn(3, 4, EMBED, requires_grad=True)
    model.set_text_features(new)
    assert (model.num_domains, model.num_clusters) == (3, 4)
    assert not model.text_features.requires_grad
    torch.testing.assert_close(model.text_features, new.detach())
    assert "prompt_features.features" in model.state_dict()
    assert not any("features" in name for name, _ in model.named_parameters())
    assert model(images, [2, 0, 1], return_dict=True)["weights"].shape == (3, 4)
    with pytest.raises(ValueError, match="D×C×e"):
        model.set_text_features(torch.randn(6, EMBED))
    with pytest.raises(TypeError, match="must be a tensor"):
        model.set_text_features([[0.0] * EMBED])
    with pytest.raises(ValueError, match="does not match the backbone width"):
        model.set_text_features(torch.randn(2, 3, EMBED + 1))
    with pytest.raises(ValueError, match="at least one"):
        model.set_text_features(torch.randn(2, 0, EMBED))
    with pytest.raises(ValueError, match="does not match the backbone width"):
        make_model(text_features=torch.randn(2, 3, 8))
    model.set_text_features(None)
    assert model.text_features is None


def test_bad_domains(images):
    model = make_model()
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        model(images, domains=[0, 2, 1])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model(images, domains=[0, 1])
    with pytest.raises(ValueError, match="integer"):
        model(images, domains=torch.zeros(3))


def test_state_dict_round_trip(images):
    model = make_model(seed=0).eval()
    state = model.state_dict()
    assert "prompt_features.features" in state
    # targets without text features, and with another number of prompts, adopt the checkpoint's
    targets = (make_model(text_features=None, seed=1), make_model(torch.randn(DOMAINS, 3, EMBED), seed=2))
    for target in targets:
        target.load_state_dict(state)
        target.eval()
        torch.testing.assert_close(target.text_features, model.text_features)
        torch.testing.assert_close(target(images, [0, 1, 0]), model(images, [0, 1, 0]))
    with pytest.raises(RuntimeError, match="prompt_features.features"):
        make_model().load_state_dict(make_model(text_features=None).state_dict())


def test_state_dict_of_an_earlier_release_loads(images):
    # Before the shared PromptFeatures holder the model kept T in its own "text_features" buffer.
    model = make_model(seed=0).eval()
    legacy = {("text_features" if key == "prompt_features.features" else key): value
              for key, value in model.state_dict().items()}
    target = make_model(text_features=None, seed=1)
    target.load_state_dict(legacy)
    torch.testing.assert_close(target.eval()(images, [0, 1, 0]), model(images, [0, 1, 0]))
    assert "text_features" in legacy  # the caller's dict is left as it was


def test_gradients_flow(images):
    model = make_model()
    projection = torch.randn(EMBED)
    (model(images, [0, 1, 1]) @ projection).sum().backward()
    backbone = model.backbone
    for name, module in [
        ("rgb", backbone.rgb_model), ("phase", backbone.phase_model), ("fusion", backbone.attn),
        ("cross_attn", model.cross_attn), ("norm", model.norm),
    ]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_plain_timm_backbone(images):
    backbone = timm.create_model("small_cnn", num_classes=0, widths=(8, EMBED))
    model = TPSNet(backbone, torch.randn(DOMAINS, CLUSTERS, EMBED), num_heads=HEADS)
    out = model(images, [0, 1, 0], return_dict=True)
    assert out["rgb"] is None and out["phase"] is None
    assert out["embedding"].shape == (3, EMBED)
    torch.testing.assert_close(out["fused"], backbone(images))
    with pytest.raises(ValueError, match="num_classes=0"):
        with_head = timm.create_model("small_cnn", num_classes=EMBED, widths=(8, 16))
        TPSNet(with_head, None, num_heads=HEADS)(images)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_features"):
        TPSNet(torch.nn.Linear(3, 3), None)
    with pytest.raises(ValueError, match="divisible"):
        make_model(num_heads=5)
    with pytest.raises(ValueError, match="positive"):
        make_model(weight_temperature=0.0)
