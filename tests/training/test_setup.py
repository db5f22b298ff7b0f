"""The training setup: optimizer groups."""

import torch

from tpsnet_plugin.models import create_tpsnet
from tpsnet_plugin.training import build_optimizer, default_config


def synergy(**weights):
    config = default_config()["synergy"]
    config["loss_weights"].update(weights)
    return config


def test_optimizer_groups_split_timm_networks_from_new_heads():
    model_config = {**default_config()["model"], "rgb_backbone": "test_resnet", "phase_backbone": "test_resnet",
                    "text_prior": False}
    model = create_tpsnet(model_config, embed_dim=16, num_domains=2, num_clusters=3)
    config = {**default_config()["synergy"], "lr_backbone": 1e-5, "lr_head": 1e-3}
    optimizer = build_optimizer(model, config)
    backbone, heads = optimizer.param_groups
    assert (backbone["name"], backbone["lr"], heads["name"], heads["lr"]) == ("backbone", 1e-5, "heads", 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".rgb_model." in f".{names[id(p)]}" or ".phase_model." in f".{names[id(p)]}" for p in backbone["params"])
    assert not any("_model." in names[id(p)] for p in heads["params"])
    assert len(backbone["params"]) + len(heads["params"]) == len(list(model.parameters()))


def test_phase_compile_mode_compiles_on_cuda_only_when_auto():
    from tpsnet_plugin.training.setup import phase_compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert phase_compile_mode("auto", cpu) is None and phase_compile_mode("auto", cuda) == "default"
    assert phase_compile_mode("off", cpu) is None and phase_compile_mode("off", cuda) is None
    for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
        assert phase_compile_mode(mode, cpu) == mode == phase_compile_mode(mode, cuda)
