import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.text_prior import relabel, relabel_with_prompts


def brute_force_relabel(features, text, domains, labels, scale, threshold):
    """Loop reference in float64: softmax over the cosines to the sample's own domain's prompts."""
    features, text = features.double().numpy(), text.double().numpy()
    out = []
    for x, d, c in zip(features, domains.tolist(), labels.tolist()):
        cos = np.array([x @ t / (np.linalg.norm(x) * np.linalg.norm(t)) for t in text[d]])
        prob = np.exp(scale * cos - (scale * cos).max())
        prob /= prob.sum()
        out.append(int(prob.argmax()) if prob.max() >= threshold else c)
    return out


def random_case(seed, n=60, num_domains=3, num_clusters=5, width=8):
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(num_domains, num_clusters, width, generator=generator)
    domains = torch.randint(num_domains, (n,), generator=generator)
    clusters = torch.randint(num_clusters, (n,), generator=generator)
    # near their domain's prompt of a random cluster, at random scales (norms must not matter)
    target = torch.randint(num_clusters, (n,), generator=generator)
    features = text[domains, target] + 0.8 * torch.randn(n, width, generator=generator)
    # norms from 0.05 to 3: the plain dot product would be far less or more confident
    features = F.normalize(features, dim=1) * torch.rand(n, 1, generator=generator).mul(3).add(0.05)
    return features, text * 3, domains, clusters


@pytest.mark.parametrize("scale,threshold", [(10.0, 0.5), (100.0, 0.9), (3.0, 0.3)])
def test_matches_the_brute_force_loop(scale, threshold):
    features, text, domains, clusters = random_case(int(scale))
    expected = brute_force_relabel(features, text, domains, clusters, scale, threshold)
    changed = sum(e != c for e, c in zip(expected, clusters.tolist()))
    kept = sum(e == c for e, c in zip(expected, clusters.tolist()))
    assert changed > 5 and kept > 5  # the case exercises both outcomes
    out = relabel_with_prompts(features, text, domains, clusters, scale, threshold)
    assert out.dtype == torch.long and out.tolist() == expected
    # unit inputs without re-normalisation: the same labels
    unit = relabel_with_prompts(F.normalize(features, dim=1), F.normalize(text, dim=2), domains,
                                clusters, scale, threshold, normalize=False)
    assert unit.tolist() == expected


def test_the_domain_picks_the_prompts():
    # Two domains with the same prompt directions in another order: the argmax follows the domain.
    eye = torch.eye(3)
    text = torch.stack([eye, eye[[2, 0, 1]]])
    features = torch.stack([eye[0], eye[0], eye[2], eye[2]]) * 4
    domains, clusters = torch.tensor([0, 1, 0, 1]), torch.tensor([2, 2, 1, 1])
    assert relabel_with_prompts(features, text, domains, clusters, 100.0, 0.9).tolist() == [0, 1, 2, 0]


def test_threshold_is_inclusive_and_ties_keep_the_label():
    text = torch.eye(2)[None]  # one domain, two prompts
    features = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # p = (0.5, 0.5) and confident
    clusters = torch.tensor([1, 1])
    domains = torch.zeros(2, dtype=torch.long)
    assert relabel_with_prompts(features, text, domains, clusters, 50.0, 0.5).tolist() == [0, 0]
    assert relabel_with_prompts(features, text, domains, clusters, 50.0, 0.51).tolist() == [1, 0]
    assert relabel_with_prompts(features, text, domains, clusters, 50.0, 1.01).tolist() == [1, 1]


def test_equals_the_per_sample_prompt_formulation():
    # The trainer's former re-labelling gathered each sample's prompts (N x C x e) and used einsum;
    # on unit vectors the helper gives the same labels without that N x C x e tensor.
    features, text, domains, clusters = random_case(7, n=200)
    features, text = F.normalize(features, dim=1), F.normalize(text, dim=2)
    probs = (20.0 * torch.einsum("ne,nce->nc", features, text[domains])).softmax(-1)
    confidence, best = probs.max(-1)
    expected = torch.where(confidence >= 0.6, best, clusters)
    assert torch.equal(relabel_with_prompts(features, text, domains, clusters, 20.0, 0.6,
                                            normalize=False), expected)


def test_blocks_half_inputs_and_no_gradient(monkeypatch):
    features, text, domains, clusters = random_case(3, n=50)
    whole = relabel_with_prompts(features, text, domains, clusters, 10.0, 0.5)
    monkeypatch.setattr(relabel, "_BLOCK_ROWS", 7)
    assert torch.equal(relabel_with_prompts(features, text, domains, clusters, 10.0, 0.5), whole)
    features.requires_grad_(True)
    out = relabel_with_prompts(features, text, domains, clusters, 10.0, 0.5)
    assert not out.requires_grad
    half = relabel_with_prompts(features.detach().bfloat16(), text, domains, clusters, 10.0, 0.5)
    assert (half == whole).float().mean() > 0.9  # bfloat16 rounding may flip a borderline case
    assert relabel_with_prompts(features[:0], text, domains[:0], clusters[:0], 10.0, 0.5).shape == (0,)


def test_bad_inputs_raise():
    features, text, domains, clusters = random_case(4, n=6)
    with pytest.raises(ValueError, match="size 7"):
        relabel_with_prompts(features[:, :7], text, domains, clusters, 10.0, 0.5)
    with pytest.raises(ValueError, match="domain 3 but text_features cover 3 domains"):
        relabel_with_prompts(features, text, domains + 3 * (domains == 0), clusters, 10.0, 0.5)
    with pytest.raises(ValueError, match="domain -1"):
        relabel_with_prompts(features, text, domains - 1, clusters, 10.0, 0.5)
    with pytest.raises(ValueError, match="one entry per feature row"):
        relabel_with_prompts(features, text, domains[:3], clusters, 10.0, 0.5)
    with pytest.raises(ValueError, match=r"\(D, C, e\)"):
        relabel_with_prompts(features, text[0], domains, clusters, 10.0, 0.5)
