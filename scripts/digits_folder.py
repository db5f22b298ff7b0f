"""Write Digits domains as a folder dataset (``<out>/<domain>/<class>/<index>.png``).

For running the folder recipe (``configs/folder.yaml``, ``--data-root``) on Digits exactly as a
user's own folders would be read: PNG files, class folders, the folder reader's decoding::

    python -m scripts.digits_folder --out data/digits_folder --domains handwritten-mnist-half mnist-m --per-domain 1500
    accelerate launch examples/train_ucdir.py --data-root data/digits_folder --domains handwritten-mnist-half mnist-m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import tpsnet_plugin  # noqa: F401

# isort: split
from tpsnet_plugin.data.digits import CLASSES, load_domain


def write(out: Path, domains: list[str], per_domain: int | None = None, seed: int = 0) -> dict[str, int]:
    """Write each domain (a seeded random subset of ``per_domain`` images when given); images per domain."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose another --out or remove it")
    counts = {}
    for domain in domains:
        images, labels = load_domain(domain)
        keep = np.arange(len(labels))
        if per_domain is not None and per_domain < len(labels):
            keep = np.sort(np.random.default_rng(seed).choice(len(labels), per_domain, replace=False))
        for index in keep:
            path = out / domain / CLASSES[labels[index]] / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(path)
        counts[domain] = len(keep)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--per-domain", type=int, default=None, help="random subset size per domain (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write(args.out, args.domains, args.per_domain, args.seed))


if __name__ == "__main__":
    main()
