"""TPSNet parts inside a plain PyTorch + pytorch-metric-learning loop (no tpsnet trainer).

The loop: embed the Digits domains with a small timm CNN, cluster them into aligned pseudo-labels,
then train a few steps with batches from ``PseudoLabelSampler``, pairs from ``DomainPromptMiner``
fed to pml's ``NTXentLoss``, plus ``ImageTextCrossEntropyLoss`` against fixed prompt features, and
evaluate with ``UCDIRAccuracyCalculator`` (exact UCDIR P@k and mAP@All).

    python examples/pml_pipeline.py --steps 30
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss
from torch.utils.data import DataLoader

import tpsnet_plugin  # noqa: F401  (torchvision fix before timm)
from tpsnet_plugin.backbones import PhasePriorBackbone
from tpsnet_plugin.clustering import ClusterPseudoLabeler
from tpsnet_plugin.data import DigitsDomain, MultiDomainDataset
from tpsnet_plugin.evaluation import UCDIRAccuracyCalculator
from tpsnet_plugin.losses import ImageTextCrossEntropyLoss
from tpsnet_plugin.miners import DomainPromptMiner
from tpsnet_plugin.samplers import PseudoLabelSampler
from tpsnet_plugin.text_prior import PromptFeatures
from tpsnet_plugin.utils import encode_domain_labels


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    features = torch.cat([F.normalize(model(chunk), dim=-1) for chunk in images.split(512)])
    model.train()
    return features


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs=2, default=["handwritten-mnist", "printed"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    dataset = MultiDomainDataset([DigitsDomain(d, image_size=32) for d in args.domains], domain_names=args.domains)
    images = torch.cat([d.images_tensor() for d in dataset.datasets])
    domains = torch.as_tensor(dataset.domains)
    num_clusters = len(dataset.classes)

    model = PhasePriorBackbone("small_cnn", phase_model=None, embed_dim=64, num_heads=4)
    clusters = ClusterPseudoLabeler(num_clusters, nredo=2, seed=args.seed).fit(embed(model, images), domains).labels
    clusters = torch.as_tensor(clusters)
    labels = encode_domain_labels(domains, clusters, num_clusters)

    # Stand-in text prior: one fixed random direction per (domain, cluster). With a trained
    # DomainPromptLearner these would be its prompt features.
    # One holder, read by the miner and the loss (a TPSNet model shares its own: model.prompt_features).
    prompts = PromptFeatures(F.normalize(torch.randn(len(args.domains), num_clusters, 64), dim=-1))
    miner = DomainPromptMiner(num_clusters, threshold=0.9, prompt_features=prompts)
    pair_loss = NTXentLoss(temperature=0.1)
    text_loss = ImageTextCrossEntropyLoss(num_clusters, logit_scale=10.0, prompt_features=prompts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    sampler = PseudoLabelSampler(clusters.numpy(), domains.numpy(), batch_size=64, m=4, seed=args.seed)
    loader = DataLoader(torch.utils.data.TensorDataset(images, labels), batch_sampler=sampler)
    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for batch_images, batch_labels in loader:
            embeddings = F.normalize(model(batch_images), dim=-1)
            pairs = miner(embeddings, batch_labels)
            loss = pair_loss(embeddings, batch_labels, pairs) + text_loss(embeddings, batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
        epoch += 1

    features = embed(model, images)
    true_labels = torch.as_tensor(dataset.labels)
    query, gallery = domains == 0, domains == 1
    calculator = UCDIRAccuracyCalculator(ks=(1, 5, 15))
    metrics = calculator.get_accuracy(features[query], true_labels[query], features[gallery], true_labels[gallery])
    print(f"{args.domains[0]} -> {args.domains[1]} after {args.steps} steps: "
          + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return metrics


if __name__ == "__main__":
    main()
