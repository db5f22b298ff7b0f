"""Retrieve with a trained TPSNet: embed a gallery folder once, answer query images.

    python -m tpsnet_plugin.retrieve --checkpoint outputs/digits --gallery DIR --query IMG [--topk 10] [--grid out.png]

``--checkpoint`` is a run's output dir (it holds ``config.yaml`` and ``model/``). Gallery
embeddings are cached under ``<checkpoint>/retrieval_cache/`` keyed by the gallery's file list,
sizes and modification times and by a hash of the whole weights file, so a second query costs one
forward pass and a retrained model never reuses stale embeddings. Neighbours are the exact top k
by cosine similarity, ties broken by gallery order (faiss when installed, else torch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from . import _torchvision_compat  # noqa: F401
from .data import IMG_EXTENSIONS, default_transform
from .data.image_io import load_rgb
from .evaluation.knn import top_k
from .models import TPSNet, create_tpsnet
from .utils.cli import positive_int
from .utils.io import atomic_save_numpy

_HASH_CHUNK = 1 << 20


def load_trained_model(checkpoint: str | Path) -> tuple[TPSNet, dict]:
    """Load the final model of a run's output dir; returns ``(model, config)``."""
    checkpoint = Path(checkpoint)
    weights, meta_file, config_file = (
        checkpoint / "model" / "model.safetensors",
        checkpoint / "model" / "model_meta.json",
        checkpoint / "config.yaml",
    )
    for path in (weights, meta_file, config_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: --checkpoint must be the output dir of a finished run "
                "(examples/train_ucdir.py writes config.yaml and model/ at the end)"
            )
    try:
        config = yaml.safe_load(config_file.read_text())
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"The run in {checkpoint} is damaged ({error}); train it again") from None
    # the trained weights replace any pretrained ones: build the architecture only
    model = create_tpsnet(config["model"], meta["embed_dim"], meta["num_domains"],
                          meta["num_clusters"], pretrained=False)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors reports damaged files with its own error type
        raise ValueError(
            f"{weights} is damaged or truncated ({error}); train the run again, or copy the file again"
        ) from None
    model.load_state_dict(state)
    config["model_meta"] = meta  # the trained run's facts (image size after data.image_size=auto, ...)
    return model.eval(), config


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Gallery folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"No images under {folder} (extensions: {', '.join(sorted(IMG_EXTENSIONS))})")
    return files


def _load(path: Path, transform) -> torch.Tensor:
    # The datasets' loader: any mode to 8-bit RGB; errors name the file (ImageReadError, an OSError).
    return transform(load_rgb(path))


@torch.no_grad()
def embed_images(model: TPSNet, paths: list[Path], image_size: int, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of image files (domain unknown: synergy over all prompts)."""
    transform = default_transform(image_size)
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([_load(p, transform) for p in paths[start:start + batch_size]])
        chunks.append(model(batch))
    return F.normalize(torch.cat(chunks), dim=-1)


def gallery_embeddings(
    model: TPSNet, checkpoint: Path, gallery: Path, image_size: int
) -> tuple[list[Path], torch.Tensor]:
    """Embed the gallery, reusing the on-disk cache when neither the gallery nor the model changed."""
    paths = list_images(gallery)
    cache = checkpoint / "retrieval_cache" / f"{_cache_key(checkpoint, paths, image_size)}.npy"
    if cache.is_file():
        features = np.load(cache)
        if features.shape[0] == len(paths):
            return paths, torch.from_numpy(features)
    features = embed_images(model, paths, image_size)
    cache.parent.mkdir(exist_ok=True)
    atomic_save_numpy(cache, features.numpy())
    return paths, features


def _cache_key(checkpoint: Path, paths: list[Path], image_size: int) -> str:
    """Hash of the gallery files (path, size, mtime), the image size and the whole weights file.

    The weights are hashed in full: retraining into the same dir gives a file of the same size
    and header, so only its content tells two models apart.
    """
    digest = hashlib.sha256()
    with open(checkpoint / "model" / "model.safetensors", "rb") as weights:
        for chunk in iter(lambda: weights.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    digest.update(f"image_size={image_size}\n".encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="output dir of a finished training run")
    parser.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    parser.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    parser.add_argument("--topk", type=positive_int, default=10, help="neighbours per query (>= 1)")
    parser.add_argument("--grid", help="write the queries and their top-k as an image grid (PNG)")
    args = parser.parse_args(argv)

    checkpoint = Path(args.checkpoint)
    model, config = load_trained_model(checkpoint)
    size = int(config["model_meta"].get("image_size") or config["data"]["image_size"])
    paths, gallery = gallery_embeddings(model, checkpoint, Path(args.gallery), size)
    query_paths = [Path(q) for q in args.query]
    queries = embed_images(model, query_paths, size)
    scores, indices = (x.numpy() for x in top_k(queries, gallery, args.topk))
    results = []
    for query, row_scores, row_indices in zip(query_paths, scores, indices):
        hits = [{"path": str(paths[i]), "score": float(s)} for s, i in zip(row_scores, row_indices)]
        results.append({"query": str(query), "results": hits})
        print(f"query {query}")
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank:3d}. {hit['score']:.4f}  {hit['path']}")
    if args.grid:
        from .training.plots import retrieval_grid

        transform = default_transform(size)
        gallery_images = {int(i): _load(paths[int(i)], transform) for i in np.unique(indices)}
        order = sorted(gallery_images)
        stacked = torch.stack([gallery_images[i] for i in order])
        position = {i: n for n, i in enumerate(order)}
        ranked = np.vectorize(position.get)(indices)
        # Labels are unknown at retrieval time: frame every result the same way.
        retrieval_grid(
            torch.stack([_load(q, transform) for q in query_paths]), np.zeros(len(query_paths)),
            stacked, np.zeros(len(order)), ranked, args.grid, title="query, then top-k",
        )
        print(f"grid written to {args.grid}")
    return results


def cli(argv=None) -> int:
    """Run :func:`main` as a command: one-line errors and an exit status instead of tracebacks."""
    try:
        main(argv)
    except (ValueError, OSError) as error:
        print(f"retrieve: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
