"""The synergy loss terms: built by weight from the config, each computed from one batch."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from tpsnet_plugin.losses import ImageTextCrossEntropyLoss, InstanceContrastiveLoss, PrototypeCrossEntropyLoss
from tpsnet_plugin.miners import DomainPromptMiner
from tpsnet_plugin.text_prior import PromptFeatures
from tpsnet_plugin.training import LOSS_TERMS, SynergyBatch, build_losses, default_config
from tpsnet_plugin.utils import encode_domain_labels


def synergy(**weights):
    config = default_config()["synergy"]
    config["loss_weights"].update(weights)
    return config


def test_loss_table_builds_each_weighted_term():
    table = build_losses(synergy(miner=0.5), num_clusters=5, embed_dim=8, prompt_features=PromptFeatures())
    assert set(table.loss_funcs) == {"prototype", "image_text", "instance", "miner"}
    assert isinstance(table.loss_funcs["prototype"], PrototypeCrossEntropyLoss)
    assert isinstance(table.loss_funcs["image_text"], ImageTextCrossEntropyLoss)
    assert isinstance(table.loss_funcs["instance"], InstanceContrastiveLoss)
    assert isinstance(table.loss_funcs["miner"], NTXentLoss)
    assert isinstance(table.mining_funcs["miner"], DomainPromptMiner)
    assert table.loss_weights == {"prototype": 1.0, "image_text": 1.0, "instance": 1.0, "miner": 0.5}


def test_zero_weight_and_missing_text_prior_drop_terms():
    table = build_losses(synergy(instance=0.0), num_clusters=5, embed_dim=8, prompt_features=None)
    assert set(table.loss_funcs) == set(table.loss_weights) == {"prototype"}


def test_total_is_the_weighted_sum():
    table = build_losses(synergy(prototype=2.0, instance=0.25), num_clusters=5, embed_dim=8, prompt_features=None)
    terms = {"prototype": torch.tensor(3.0), "instance": torch.tensor(4.0)}
    assert table.total(terms).item() == pytest.approx(2.0 * 3.0 + 0.25 * 4.0)


def test_instance_within_domain_comes_from_the_synergy_section():
    config = synergy()
    config["instance_within_domain"] = False
    assert build_losses(config, 5, 8, prompt_features=None).loss_funcs["instance"].within_domain is False


def test_each_term_computes_what_its_loss_gives_on_the_batch_it_declares():
    torch.manual_seed(0)
    num_clusters, dim = 5, 8
    prompt_features = PromptFeatures()
    table = build_losses(synergy(miner=0.5), num_clusters=num_clusters, embed_dim=dim, prompt_features=prompt_features)
    assert list(table.terms) == list(LOSS_TERMS)  # computed and logged in the registry's order
    text = F.normalize(torch.randn(2, num_clusters, dim), dim=-1)
    prompt_features.set(text)  # one holder: the image-text loss and the miner read what it holds
    assert torch.equal(table.loss_funcs["image_text"].text_features, text)
    assert torch.equal(table.mining_funcs["miner"].text_features, text)
    table.loss_funcs["prototype"].init_prototypes(F.normalize(torch.randn(num_clusters, dim), dim=-1))
    for loss in table.loss_funcs.values():
        loss.eval()  # no prototype update: the references below see the same state
    view1, view2 = (F.normalize(torch.randn(12, dim), dim=-1) for _ in range(2))
    domains, clusters = torch.arange(12) % 2, torch.arange(12) % num_clusters
    keep = torch.tensor([True, False] * 6)
    batch = SynergyBatch(view1, view2, domains, clusters, keep, num_clusters)
    terms = table.compute(batch)

    both, both_keep = torch.cat([view1, view2]), keep.repeat(2)
    both_combined = encode_domain_labels(domains.repeat(2), clusters.repeat(2), num_clusters)
    combined = encode_domain_labels(domains, clusters, num_clusters)
    funcs, miner = table.loss_funcs, table.mining_funcs["miner"]
    expected = {
        "prototype": funcs["prototype"](both[both_keep], clusters.repeat(2)[both_keep]),
        "image_text": funcs["image_text"](both[both_keep], both_combined[both_keep]),
        "instance": funcs["instance"](view1, domains, ref_emb=view2),
        "miner": funcs["miner"](view1, combined, miner(view1, combined)),
    }
    assert list(terms) == list(expected)
    for name, value in expected.items():
        assert torch.allclose(terms[name], value), name
    assert table.total(terms).item() == pytest.approx(sum(table.loss_weights[n] * v.item() for n, v in terms.items()))


def test_the_terms_gradients_are_bitwise_those_of_one_shared_graph():
    # Two separate concatenations of the views would sum the gradients in another order: the same
    # maths, other floating-point bits, and so another run than the one the recipes were measured with.
    torch.manual_seed(1)
    num_clusters, dim = 4, 16
    table = build_losses(synergy(), num_clusters=num_clusters, embed_dim=dim,
                         prompt_features=PromptFeatures(F.normalize(torch.randn(2, num_clusters, dim), dim=-1)))
    table.loss_funcs["prototype"].init_prototypes(F.normalize(torch.randn(num_clusters, dim), dim=-1))
    for loss in table.loss_funcs.values():
        loss.eval()
    base = torch.randn(64, dim)
    domains, clusters = torch.arange(64) % 2, torch.randint(0, num_clusters, (64,))
    keep = torch.rand(64) > 0.3

    noise = 0.1 * torch.randn(64, dim, generator=torch.Generator().manual_seed(2))

    def grads(compute):
        view1, view2 = base.clone().requires_grad_(), (base + noise).requires_grad_()
        total = table.total(compute(F.normalize(view1, dim=-1), F.normalize(view2, dim=-1)))
        total.backward()
        return view1.grad, view2.grad

    def reference(e1, e2):
        both, both_keep = torch.cat([e1, e2]), keep.repeat(2)
        combined = encode_domain_labels(domains.repeat(2), clusters.repeat(2), num_clusters)
        funcs = table.loss_funcs
        return {"prototype": funcs["prototype"](both[both_keep], clusters.repeat(2)[both_keep]),
                "image_text": funcs["image_text"](both[both_keep], combined[both_keep]),
                "instance": funcs["instance"](e1, domains, ref_emb=e2)}

    ours = grads(lambda e1, e2: table.compute(SynergyBatch(e1, e2, domains, clusters, keep, num_clusters)))
    expected = grads(reference)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))


def test_each_registered_term_declares_its_weight_option():
    from tpsnet_plugin.training import options

    weights = options.OPTIONS["synergy"]["loss_weights"]
    assert list(weights) == list(LOSS_TERMS)
    assert {name: option.default for name, option in weights.items()} == {
        name: term.default_weight for name, term in LOSS_TERMS.items()}
    assert all(option.help == term.help and term.help for option, term in zip(weights.values(), LOSS_TERMS.values()))
