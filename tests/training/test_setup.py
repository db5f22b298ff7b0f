"""The training setup: loss table keyed by term name with loss_weights, optimizer groups."""

import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from tpsnet_plugin.losses import ImageTextCrossEntropyLoss, InstanceContrastiveLoss, PrototypeCrossEntropyLoss
from tpsnet_plugin.miners import DomainPromptMiner
from tpsnet_plugin.models import create_tpsnet
from tpsnet_plugin.training import build_losses, build_optimizer, default_config


def synergy(**weights):
    config = default_config()["synergy"]
    config["loss_weights"].update(weights)
    return config


def test_loss_table_builds_each_weighted_term():
    table = build_losses(synergy(miner=0.5), num_clusters=5, embed_dim=8, text_prior=True)
    assert set(table.loss_funcs) == {"prototype", "image_text", "instance", "miner"}
    assert isinstance(table.loss_funcs["prototype"], PrototypeCrossEntropyLoss)
    assert isinstance(table.loss_funcs["image_text"], ImageTextCrossEntropyLoss)
    assert isinstance(table.loss_funcs["instance"], InstanceContrastiveLoss)
    assert isinstance(table.loss_funcs["miner"], NTXentLoss)
    assert isinstance(table.mining_funcs["miner"], DomainPromptMiner)
    assert table.loss_weights == {"prototype": 1.0, "image_text": 1.0, "instance": 1.0, "miner": 0.5}


def test_zero_weight_and_missing_text_prior_drop_terms():
    table = build_losses(synergy(instance=0.0), num_clusters=5, embed_dim=8, text_prior=False)
    assert set(table.loss_funcs) == set(table.loss_weights) == {"prototype"}


def test_total_is_the_weighted_sum():
    table = build_losses(synergy(prototype=2.0, instance=0.25), num_clusters=5, embed_dim=8, text_prior=False)
    terms = {"prototype": torch.tensor(3.0), "instance": torch.tensor(4.0)}
    assert table.total(terms).item() == pytest.approx(2.0 * 3.0 + 0.25 * 4.0)


def test_instance_within_domain_comes_from_the_synergy_section():
    config = synergy()
    config["instance_within_domain"] = False
    assert build_losses(config, 5, 8, text_prior=False).loss_funcs["instance"].within_domain is False


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
