"""Tests for PhasePriorBackbone (tiny timm models, 32 px images)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import tpsnet_plugin  # noqa: F401

# isort: split
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tpsnet_plugin.backbones import PhasePriorBackbone, phase_only

EMBED = 32
TINY_CNN = {"widths": (8, 16)}


def tiny_backbone(rgb_model="small_cnn", **kwargs):
    defaults = dict(
        phase_model="small_cnn", embed_dim=EMBED, num_heads=4, phase_kwargs=TINY_CNN,
        rgb_kwargs=TINY_CNN if rgb_model == "small_cnn" else None,
    )
    defaults.update(kwargs)
    torch.manual_seed(0)
    return PhasePriorBackbone(rgb_model, **defaults)


@pytest.mark.parametrize(
    "rgb_model, rgb_kwargs",
    [("test_resnet", None), ("resnet18", None), ("test_vit", {"img_size": 32}), ("small_cnn", None)],
)
def test_timm_models_by_name(rgb_model, rgb_kwargs):
    backbone = tiny_backbone(rgb_model, rgb_kwargs=rgb_kwargs)
    reference = timm.create_model(rgb_model, num_classes=0, **(rgb_kwargs or {}))
    assert type(backbone.rgb_model) is type(reference)
    assert backbone.num_features == backbone.embed_dim == EMBED
    assert backbone.phase_model.in_chans == 1
    # mean/std come from the timm model's pretrained_cfg
    torch.testing.assert_close(backbone.rgb_mean.flatten(), torch.tensor(reference.pretrained_cfg["mean"]))
    torch.testing.assert_close(backbone.rgb_std.flatten(), torch.tensor(reference.pretrained_cfg["std"]))
    backbone.eval()
    images = torch.rand(2, 3, 32, 32)
    tokens = backbone.forward_features(images)
    assert tokens.shape == (2, 2, EMBED)
    fused = backbone(images)
    assert fused.shape == (2, EMBED)
    torch.testing.assert_close(fused, tokens.mean(dim=1))
    torch.testing.assert_close(backbone.forward_head(tokens, pre_logits=True), fused)


def test_forward_parts_matches_a_manual_recomputation():
    backbone = tiny_backbone(phase_amplitude=2000.0, phase_mean=0.3, phase_std=0.2).eval()
    images = torch.rand(3, 3, 32, 32)
    parts = backbone.forward_parts(images)
    assert set(parts) == {"rgb", "phase", "tokens", "fused"}
    mean = torch.tensor(backbone.rgb_model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.rgb_model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    rgb = backbone.rgb_proj(backbone.rgb_model((images - mean) / std))
    phase_image = (phase_only(images, 2000.0) - 0.3) / 0.2
    phase = backbone.phase_proj(backbone.phase_model(phase_image))
    z = nn.functional.layer_norm(
        torch.stack([rgb, phase], 1), (EMBED,), backbone.norm.weight, backbone.norm.bias
    )
    tokens = []
    for sample in z:  # self-attention, one sample at a time
        attended, _ = backbone.attn(sample[None], sample[None], sample[None])
        tokens.append(sample + attended[0])
    tokens = torch.stack(tokens)
    torch.testing.assert_close(parts["rgb"], rgb)
    torch.testing.assert_close(parts["phase"], phase)
    torch.testing.assert_close(parts["tokens"], tokens)
    torch.testing.assert_close(parts["fused"], tokens.mean(1))


def test_swap_backbone_by_name_only():
    images = torch.rand(2, 3, 32, 32)
    for name in ("small_cnn", "test_resnet", "test_convnext"):
        backbone = PhasePriorBackbone(name, "small_cnn", embed_dim=EMBED, num_heads=4, phase_kwargs=TINY_CNN)
        assert backbone.rgb_model.default_cfg["architecture"] == name
        assert backbone(images).shape == (2, EMBED)


def test_checkpoint_path_round_trip(tmp_path):
    source = timm.create_model("test_resnet", num_classes=0)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    backbone = tiny_backbone("test_resnet", checkpoint_path=str(path))
    expected, loaded = source.state_dict(), backbone.rgb_model.state_dict()
    assert expected.keys() == loaded.keys()
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], msg=name)
    fresh = tiny_backbone("test_resnet")
    assert not torch.equal(fresh.rgb_model.conv1[0].weight, loaded["conv1.0.weight"])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        tiny_backbone("test_resnet", checkpoint_path=str(tmp_path / "missing.pth"))
    with_head = tmp_path / "with_head.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), with_head)
    with pytest.raises(RuntimeError, match="does not match the model"):
        tiny_backbone("test_resnet", checkpoint_path=str(with_head))
    # the route the error suggests for a checkpoint with a classifier head works offline
    backbone = tiny_backbone(
        "test_resnet", pretrained=True, rgb_kwargs={"pretrained_cfg_overlay": {"file": str(with_head)}}
    )
    torch.testing.assert_close(
        backbone.rgb_model.conv1[0].weight, torch.load(with_head)["conv1.0.weight"]
    )
    with pytest.raises(ValueError, match="not both"):
        tiny_backbone("test_resnet", pretrained=True, checkpoint_path=str(with_head))


def test_without_phase_prior():
    backbone = tiny_backbone(phase_model=None, phase_kwargs=None)
    assert backbone.phase_model is None and backbone.phase_proj is None
    parts = backbone.forward_parts(torch.rand(2, 3, 32, 32))
    assert parts["phase"] is None
    assert parts["tokens"].shape == (2, 1, EMBED)
    torch.testing.assert_close(parts["fused"], parts["tokens"][:, 0])


def test_without_fusion():
    backbone = tiny_backbone(fusion=False)
    assert backbone.attn is None
    parts = backbone.forward_parts(torch.rand(2, 3, 32, 32))
    z = backbone.norm(torch.stack([parts["rgb"], parts["phase"]], 1))
    torch.testing.assert_close(parts["tokens"], z)


def test_gradients_reach_both_branches():
    backbone = tiny_backbone()
    projection = torch.randn(EMBED)  # sum() alone is constant under LayerNorm
    (backbone(torch.rand(4, 3, 32, 32)) @ projection).sum().backward()
    branches = [("rgb", backbone.rgb_model), ("phase", backbone.phase_model), ("attn", backbone.attn)]
    for name, module in branches:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_module_backbones():
    rgb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 24))
    rgb.num_features = 24
    phase = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 12))
    phase.num_features = 12
    backbone = PhasePriorBackbone(rgb, phase, embed_dim=EMBED, num_heads=4)
    torch.testing.assert_close(backbone.rgb_mean.flatten(), torch.tensor(IMAGENET_DEFAULT_MEAN))
    torch.testing.assert_close(backbone.rgb_std.flatten(), torch.tensor(IMAGENET_DEFAULT_STD))
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, EMBED)
    with pytest.raises(ValueError, match="num_features"):
        PhasePriorBackbone(nn.Flatten(), None, embed_dim=EMBED, num_heads=4)
    with pytest.raises(ValueError, match="only when rgb_model is a timm name"):
        PhasePriorBackbone(rgb, None, embed_dim=EMBED, num_heads=4, pretrained=True)


def test_explicit_mean_std():
    backbone = tiny_backbone(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    torch.testing.assert_close(backbone.rgb_mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(backbone.rgb_std.flatten(), torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("argument", ["rgb_model", "phase_model"])
def test_unknown_names_suggest_close_matches(argument):
    kwargs = {"rgb_model": "small_cnn", "phase_model": "small_cnn", argument: "resnet_18"}
    with pytest.raises(ValueError, match=rf"{argument}='resnet_18' is not a timm model.*resnet18"):
        PhasePriorBackbone(kwargs.pop("rgb_model"), **kwargs, embed_dim=EMBED, num_heads=4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        tiny_backbone(num_heads=5)
    with pytest.raises(ValueError, match="rgb_kwargs must not set"):
        tiny_backbone(rgb_kwargs={"num_classes": 3})
    with pytest.raises(ValueError, match="phase_kwargs must not set"):
        tiny_backbone(phase_kwargs={"in_chans": 3})
    with pytest.raises(ValueError, match="expand"):
        tiny_backbone()(torch.rand(2, 1, 32, 32))


@pytest.mark.slow
def test_pretrained_offline_fails_fast_with_clear_error():
    script = textwrap.dedent(
        """
        import tpsnet_plugin
        from tpsnet_plugin.backbones import PhasePriorBackbone
        for kwargs in ({"pretrained": True}, {"phase_pretrained": True}):
            try:
                PhasePriorBackbone("test_resnet", "test_resnet", embed_dim=32, num_heads=4, **kwargs)
            except RuntimeError as error:
                print("ERROR:", error)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, result.stdout + result.stderr
    assert "rgb_model='test_resnet'" in errors[0] and "phase_model='test_resnet'" in errors[1]
    assert all("could not fetch" in e and "checkpoint_path" in e for e in errors)


# ------------------------------------------------------------------ compiled phase branch
def _train_steps(backbone, batches, autocast=False):
    """Forward + backward per batch (train mode, BatchNorm updating); outputs and gradients."""
    outputs, grads = [], []
    for x in batches:
        backbone.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fused = backbone(x)
        fused.float().square().sum().backward()
        outputs.append(fused.detach().float())
        grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters() if p.grad is not None]))
    return outputs, grads


@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_phase_branch_matches_eager(autocast):
    # Inductor on the CPU (the GPU path compiles the same graph with other kernels): outputs,
    # gradients and BatchNorm running statistics equal eager's, with a smaller last batch (a new
    # shape, recompiled) and under bf16 autocast; the state_dict is unchanged.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, compiled = tiny_backbone(), tiny_backbone()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_phase_branch(mode="default")
    assert compiled.phase_branch_compiled and not eager.phase_branch_compiled
    assert list(compiled.state_dict()) == list(eager.state_dict())
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 3, 16, 16, generator=generator) for _ in range(2)]
    batches.append(torch.rand(5, 3, 16, 16, generator=generator))  # last, smaller batch
    # inductor reorders reductions: compare against each tensor's scale
    relative = 2e-2 if autocast else 1e-4
    for (out_e, grad_e), (out_c, grad_c) in zip(zip(*_train_steps(eager, batches, autocast)),
                                                zip(*_train_steps(compiled, batches, autocast))):
        for compiled_value, eager_value in ((out_c, out_e), (grad_c, grad_e)):
            torch.testing.assert_close(compiled_value, eager_value, rtol=0,
                                       atol=relative * float(eager_value.abs().max()))
    # the phase branch went through dynamo: graphs were compiled (one more for the new shape)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    for (name, buffer_e), buffer_c in zip(eager.named_buffers(), compiled.buffers()):
        if "running" in name:
            torch.testing.assert_close(buffer_c, buffer_e, atol=1e-5, rtol=1e-4)
    assert any("running_mean" in name for name, _ in eager.phase_model.named_buffers())


def test_compile_phase_branch_without_a_phase_model_is_an_error():
    with pytest.raises(ValueError, match="no phase model"):
        tiny_backbone(phase_model=None).compile_phase_branch()
