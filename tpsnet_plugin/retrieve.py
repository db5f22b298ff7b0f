"""Retrieve with a trained TPSNet: embed a gallery folder once, answer query images.

    python -m tpsnet_plugin.retrieve --checkpoint outputs/digits --gallery DIR --query IMG [--topk 10] [--grid out.png]

``--checkpoint`` is a run's output dir (it holds ``config.yaml`` and ``model/``). Gallery
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
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from . import _torchvision_compat  # noqa: F401
from .data import IMG_EXTENSIONS, default_transform
from .data.folder import find_images
from .data.icons import cache_dir
from .data.image_io import load_rgb
from .errors import DataError, TPSNetError, WeightsFileError
from .evaluation.knn import top_k
from .models import TPSNet, create_tpsnet
from .training.config import ConfigError, read_config_file
from .utils.cli import positive_int
from .utils.io import atomic_save_numpy

_HASH_CHUNK = 1 << 20
_PROG = "retrieve"
_META_KEYS = ("embed_dim", "num_domains", "num_clusters")


def load_trained_model(checkpoint: str | Path) -> tuple[TPSNet, dict]:
    """Load the final model of a run's output dir; returns ``(model, config)``.

    ``config["model_meta"]`` holds the run's ``model_meta.json``, with ``image_size`` resolved.

    Raises:
        FileNotFoundError: ``config.yaml``, ``model/model_meta.json`` or ``model/model.safetensors``
            is missing.
        ConfigError: ``config.yaml`` is damaged or describes no model that can be built.
        WeightsFileError: The weights or ``model_meta.json`` are damaged, or the weights belong to
            another architecture.
    """
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
    config, meta = _read_config(config_file), _read_meta(meta_file)
    meta["image_size"] = _image_size(config, meta, config_file)
    # the trained weights replace any pretrained ones: build the architecture only
    try:
        model = create_tpsnet(config["model"], meta["embed_dim"], meta["num_domains"],
                              meta["num_clusters"], pretrained=False)
    except TPSNetError:  # names its own fix (e.g. the packaged CLIP of model.rgb_from_clip)
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{config_file} does not describe a model that can be built ({type(error).__name__}: "
            f"{_first_line(error)}); restore the run's config.yaml, or train the run again"
        ) from None
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors reports damaged files with its own error type
        raise WeightsFileError(
            f"{weights} is damaged or truncated ({error}); train the run again, or copy the file again"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as error:  # shapes or keys differ; text features of another width
        raise WeightsFileError(
            f"{weights} holds the weights of another model than the run's config.yaml and model_meta.json describe "
            f"(model.rgb_backbone={config['model'].get('rgb_backbone')!r}, embed_dim={meta['embed_dim']}): "
            f"{_mismatch(model, state, error)}; use the model/ folder and config.yaml of one run"
        ) from None
    config["model_meta"] = meta  # the trained run's facts (image size after data.image_size=auto, ...)
    return model.eval(), config


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_config(path: Path) -> dict:
    """The run's ``config.yaml``: a mapping with ``model`` and ``data`` sections, or an error naming it."""
    try:
        config = read_config_file(path)
    except ValueError as error:  # ConfigError: not UTF-8, not YAML (file and line named), not a mapping
        raise ConfigError(f"{error}; restore the run's config.yaml, or train the run again") from None
    if not all(isinstance(config.get(section), dict) for section in ("model", "data")):
        raise ConfigError(f"{path} has no model and data sections: it is not a run's config.yaml; "
                          "restore it, or train the run again")
    return config


def _read_meta(path: Path) -> dict:
    """The run's ``model_meta.json``: positive integer ``embed_dim``, ``num_domains``, ``num_clusters``."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not UTF-8, not JSON
        meta, reason = None, _first_line(error)
    else:
        reason = f"it needs positive integers {', '.join(_META_KEYS)}"
    if isinstance(meta, dict) and all(_positive_int(meta.get(key)) for key in _META_KEYS):
        return meta
    raise WeightsFileError(f"{path} is damaged ({reason}); train the run again, or copy the model/ folder again")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _image_size(config: dict, meta: dict, config_file: Path) -> int:
    """The side the model was trained on: the meta's (after ``data.image_size=auto``), else the config's."""
    size = meta.get("image_size") or config["data"].get("image_size")
    if not _positive_int(size):
        raise ConfigError(f"{config_file} gives no image size the model was trained on (data.image_size="
                          f"{size!r}); restore the run's config.yaml and model_meta.json, or train it again")
    return size


def _mismatch(model: TPSNet, state: dict[str, torch.Tensor], error: Exception) -> str:
    """The differences between a state dict and a model, in one line: counts and the first of each."""
    expected = model.state_dict()
    shapes = [f"{key} is {list(state[key].shape)} in the file, {list(value.shape)} in the model"
              for key, value in expected.items() if key in state and state[key].shape != value.shape]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    parts = [f"{len(found)} {what} (first: {found[0]})" for found, what in (
        (shapes, "tensor shapes differ"), (missing, "tensors missing"), (unexpected, "unexpected tensors")) if found]
    return ", ".join(parts) or _first_line(error)


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
    model: TPSNet, checkpoint: Path, gallery: Path, image_size: int
) -> tuple[list[Path], torch.Tensor]:
    """Embed the gallery, reusing the on-disk cache when neither the gallery nor the model changed.

    The cache is read from ``<checkpoint>/retrieval_cache/``, then from the user cache folder
    (:func:`~tpsnet_plugin.data.icons.cache_dir` ``("retrieval")``), and written to the first of
    them that takes it; a damaged cache file is named in a warning and rebuilt.
    """
    paths = list_images(gallery)
    name = f"{_cache_key(checkpoint, paths, image_size)}.npy"
    caches = [checkpoint / "retrieval_cache" / name, cache_dir("retrieval") / name]
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
        reason = _first_line(error)
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
            refused.append(f"{cache.parent} ({error.strerror or _first_line(error)})")
            continue
        if refused:
            warnings.warn(f"cannot write the retrieval cache to {refused[0]}; cached in {cache.parent} instead",
                          stacklevel=3)
        return
    warnings.warn(f"cannot write the retrieval cache to {' or '.join(refused)}; the gallery is not cached "
                  "(set TPSNET_CACHE to a writable folder to cache it)", stacklevel=3)


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
    size = config["model_meta"]["image_size"]
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{_PROG}: warning: {message}", file=sys.stderr)


def cli(argv=None) -> int:
    """Run :func:`main` as a command: one-line errors and warnings, an exit status instead of tracebacks."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            main(argv)
        except (TPSNetError, OSError) as error:  # anything else is a bug: its traceback is kept
            print(f"{_PROG}: error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
