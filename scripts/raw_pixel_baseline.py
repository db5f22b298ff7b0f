"""Raw-pixel cosine retrieval between the Digits domains: the floor every model must beat.

    python scripts/raw_pixel_baseline.py [--ks 1 5 15] [--json benchmarks/results/raw_pixel_digits.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from tpsnet_plugin.data import DOMAINS, load_domain
from tpsnet_plugin.evaluation import evaluate_domains, format_table, raw_pixel_features


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 5, 15])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    features, labels, domains = [], [], []
    for d, name in enumerate(DOMAINS):
        images, domain_labels = load_domain(name)  # uint8 N x 28 x 28, or N x 28 x 28 x 3 (mnist-m)
        images = torch.from_numpy(images)
        features.append(raw_pixel_features(images.permute(0, 3, 1, 2) if images.ndim == 4 else images[:, None]))
        labels.append(domain_labels)
        domains.append(np.full(len(images), d))
    results = evaluate_domains(
        torch.cat(features), np.concatenate(labels), np.concatenate(domains), domain_names=DOMAINS, ks=tuple(args.ks)
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
