"""Retrieve with a trained TPSNet: embed a gallery folder once, answer query images.

    python -m tpsnet_plugin.retrieve --checkpoint outputs/digits --gallery DIR --query IMG [--topk 10] [--grid out.png]

``--checkpoint`` is a run's output dir (it holds ``model/``), its ``model/`` folder, or the id of a
Hugging Face Hub model repo holding such a folder's two files. Gallery
embeddings are cached under ``<checkpoint>/retrieval_cache/`` keyed by the gallery's file list,
sizes and modification times and by a hash of the whole weights file, so a second query costs one
forward pass and a retrained model never reuses stale embeddings. Where the run folder cannot be
written (a shared, read-only model store) the cache goes to the user cache folder
(``$TPSNET_CACHE/retrieval`` or ``~/.cache/tpsnet_plugin/retrieval``), else nothing is cached; a
damaged cache file is rebuilt. The gallery is walked like the training folders: hidden files and
folders (``.DS_Store``, macOS ``._x.jpg`` resource forks) are skipped. Neighbours are the exact
top k by cosine similarity, ties broken by gallery order (faiss when installed, else torch).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import IMG_EXTENSIONS, default_transform
from .data.icons import cache_dir
from .data.image_io import load_rgb
from .data.walk import find_images
from .errors import DataError, TPSNetError, first_line
from .evaluation.knn import top_k
from .models import TPSNet, load_pretrained
from .models.pretrained import resolve_pretrained
from .utils.cli import positive_int, report_user_error
from .utils.io import atomic_save_numpy, file_sha256

_PROG = "retrieve"


def model_folder(checkpoint: str | Path) -> Path:
    """The folder of a trained model: a run's ``model/``, the folder itself, or a Hub repo's download.

    Raises:
        FileNotFoundError: A folder that holds no trained model.
        WeightsDownloadError: No folder of that name, and no Hub model repo of that id could be fetched.
    """
    folder = resolve_pretrained(checkpoint)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model'} is missing: --checkpoint must be the output dir of a finished "
                                "run (the training command writes model/ at the end)")
    return folder


def load_trained_model(checkpoint: str | Path) -> tuple[TPSNet, dict]:
    """Load the final model of a run's output dir, its ``model/`` folder or a Hub model repo
    (:func:`model_folder`); returns ``(model, config)``.

    ``config`` is the model's own config (``model/config.json``: architecture, ``image_size``,
    domain and class names, normalisation); runs written before it are read from
    ``model_meta.json`` and the run's ``config.yaml``.

    Raises:
        FileNotFoundError: The weights or the model config are missing.
        ConfigError: The config describes no model that can be built.
        WeightsFileError: The weights or a config file are damaged, or the weights belong to
            another architecture.
    """
    return load_pretrained(model_folder(checkpoint))


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, walked like the training folders, sorted.

    Recursive; hidden files and folders (``.DS_Store``, macOS ``._x.jpg``) are skipped and each
    real folder is entered once (see :class:`~tpsnet_plugin.data.DomainImageFolder`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Gallery folder not found: {folder}")
    files = sorted(p for p in map(Path, find_images(folder, IMG_EXTENSIONS)) if p.is_file())
    if not files:
        raise DataError(f"No images under {folder} (extensions: {', '.join(sorted(IMG_EXTENSIONS))}; "
                         "hidden files are skipped)")
    return files


def _load(path: Path, transform) -> torch.Tensor:
    # The datasets' loader: any mode to 8-bit RGB, EXIF orientation applied; errors name the file
    # (ImageReadError, an OSError).
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
    model: TPSNet, folder: Path, gallery: Path, image_size: int
) -> tuple[list[Path], torch.Tensor]:
    """Embed the gallery, reusing the on-disk cache when neither the gallery nor the model changed.

    Args:
        model: The trained model.
        folder: Its folder (:func:`model_folder`); the cache key hashes its ``model.safetensors``.
        gallery: The gallery folder.
        image_size: The side the images are resized to.

    The cache is read from ``retrieval_cache/`` in the run's output dir (beside ``model/``; a model
    folder of another name holds its own), then from the user cache folder
    (:func:`~tpsnet_plugin.data.icons.cache_dir` ``("retrieval")``), and written to the first of
    them that takes it; a damaged cache file is named in a warning and rebuilt.
    """
    paths = list_images(gallery)
    name = f"{_cache_key(folder / 'model.safetensors', paths, image_size)}.npy"
    run = folder.parent if folder.name == "model" else folder
    caches = [run / "retrieval_cache" / name, cache_dir("retrieval") / name]
    for cache in caches:
        features = _read_cache(cache, (len(paths), model.embed_dim))
        if features is not None:
            return paths, torch.from_numpy(features)
    features = embed_images(model, paths, image_size)
    _write_cache(caches, features.numpy())
    return paths, features


def _read_cache(cache: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached embeddings, or None when there are none or they are damaged (with a warning)."""
    if not cache.is_file():
        return None
    try:
        features = np.load(cache, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # truncated, not an .npy file, unreadable
        reason = first_line(error)
    else:
        if features.dtype == np.float32 and features.shape == shape and np.isfinite(features).all():
            return features
        reason = f"a {features.dtype} array of shape {features.shape}, expected finite float32 {shape}"
    warnings.warn(f"the retrieval cache {cache} is damaged ({reason}); rebuilding it", stacklevel=3)
    return None


def _write_cache(caches: list[Path], features: np.ndarray) -> None:
    """Save to the first cache file whose folder can be written; warn where one could not."""
    refused = []
    for cache in caches:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_numpy(cache, features)
        except OSError as error:  # read-only folder or file system, no space left, ...
            refused.append(f"{cache.parent} ({error.strerror or first_line(error)})")
            continue
        if refused:
            warnings.warn(f"cannot write the retrieval cache to {refused[0]}; cached in {cache.parent} instead",
                          stacklevel=3)
        return
    warnings.warn(f"cannot write the retrieval cache to {' or '.join(refused)}; the gallery is not cached "
                  "(set TPSNET_CACHE to a writable folder to cache it)", stacklevel=3)


def _cache_key(weights: Path, paths: list[Path], image_size: int) -> str:
    """Hash of the gallery files (path, size, mtime), the image size and the whole weights file.

    The weights are hashed in full: retraining into the same dir gives a file of the same size
    and header, so only its content tells two models apart.
    """
    digest = hashlib.sha256(file_sha256(weights).encode())
    digest.update(f"image_size={image_size}\n".encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="output dir of a finished training run, its model/ folder, or a Hugging Face Hub "
                             "model repo id (owner/name)")
    parser.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    parser.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    parser.add_argument("--topk", type=positive_int, default=10, help="neighbours per query (>= 1)")
    parser.add_argument("--grid", help="write the queries and their top-k as an image grid (PNG)")
    args = parser.parse_args(argv)

    folder = model_folder(args.checkpoint)
    model, config = load_pretrained(folder)
    size = config["image_size"]
    paths, gallery = gallery_embeddings(model, folder, Path(args.gallery), size)
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{_PROG}: warning: {message}", file=sys.stderr)


def cli(argv=None) -> int:
    """Run :func:`main` as a command: one-line errors and warnings, an exit status instead of tracebacks."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            main(argv)
        except (TPSNetError, OSError) as error:  # anything else is a bug: its traceback is kept
            return report_user_error(_PROG, error)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
