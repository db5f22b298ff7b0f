"""A trained TPSNet as a self-describing folder: ``model.safetensors`` and ``config.json``.

``config.json`` holds everything needed to rebuild the network and feed it (the open_clip / timm
convention): the ``model`` config section (architecture), the embedding width, the numbers of
domains and clusters, the resolved training image size, the domain and class names, and the RGB
normalisation the backbone applies to images in [0, 1]::

    model = TPSNet.from_pretrained("outputs/digits/model")
    model = TPSNet.from_pretrained("owner/name")  # a Hugging Face Hub model repo with the same two files

Folders written before ``config.json`` existed (``model_meta.json`` beside the weights and the
run's ``config.yaml`` one level up) are read too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import ConfigError, TPSNetError, WeightsDownloadError, WeightsFileError, first_line
from ..utils.io import atomic_write_text

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_META_FILE = "model_meta.json"  # before config.json: sizes only, the architecture in ../config.yaml
_SIZES = ("embed_dim", "num_domains", "num_clusters", "image_size")


def pretrained_config(
    model_section: Mapping[str, Any], model: torch.nn.Module, *, embed_dim: int, num_domains: int, num_clusters: int,
    image_size: int, domain_names: Sequence[str], classes: Sequence[str],
) -> dict[str, Any]:
    """The ``config.json`` of a trained TPSNet (see the module docstring)."""
    backbone = model.backbone
    return {
        "architecture": "tpsnet",
        "model": dict(model_section),
        "embed_dim": int(embed_dim),
        "num_domains": int(num_domains),
        "num_clusters": int(num_clusters),
        "image_size": int(image_size),
        "domain_names": list(domain_names),
        "classes": [str(c) for c in classes],
        "normalisation": {"input": "RGB in [0, 1], resized to image_size x image_size",
                          "rgb_mean": backbone.rgb_mean.flatten().tolist(),
                          "rgb_std": backbone.rgb_std.flatten().tolist()},
    }


def save_config(folder: str | Path, config: Mapping[str, Any]) -> Path:
    """Write ``config.json`` into ``folder`` (atomic); the weights are saved beside it by the caller."""
    path = Path(folder) / MODEL_CONFIG_FILE
    atomic_write_text(path, json.dumps(dict(config), indent=2))
    return path


def read_config(folder: str | Path) -> dict[str, Any]:
    """The model config of a trained-model folder: its ``config.json``, or the older pair of files.

    Raises:
        FileNotFoundError: The folder holds no model config.
        ConfigError / WeightsFileError: A config file is damaged; the message names it.
    """
    return _read_config_and_source(Path(folder))[0]


def _read_config_and_source(folder: Path) -> tuple[dict[str, Any], str]:
    path = folder / MODEL_CONFIG_FILE
    if not path.is_file():
        return _legacy_config(folder)
    config = _read_json(path)
    if not isinstance(config.get("model"), dict):
        raise WeightsFileError(f"{path} is damaged (no model section); copy the model folder again")
    _check_sizes(config, path)
    return config, str(path)


def resolve_pretrained(name_or_folder: str | Path, revision: str | None = None) -> Path:
    """The local folder of a trained model: ``name_or_folder`` (a run's output dir gives its ``model/``), or,
    when no such folder exists, the Hugging Face Hub model repo of that id downloaded into the Hub cache.

    Raises:
        WeightsDownloadError: No folder of that name, and no Hub repo could be fetched (offline, unknown id).
    """
    folder = Path(name_or_folder).expanduser()
    if folder.exists():
        return folder / "model" if not (folder / WEIGHTS_FILE).is_file() and (folder / "model").is_dir() else folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_folder), revision=revision,
                                      allow_patterns=[WEIGHTS_FILE, MODEL_CONFIG_FILE]))
    except Exception as error:  # invalid id, unknown repo, no network, HF_HUB_OFFLINE without a cached copy
        raise WeightsDownloadError(
            f"{name_or_folder} is neither a folder here nor a Hugging Face Hub model that could be fetched "
            f"({type(error).__name__}: {first_line(error)}); give a run's model/ folder, or a Hub repo id "
            "('owner/name') with the network on (HF_HUB_OFFLINE=1 reads only models already in the Hub cache)"
        ) from None


def load_pretrained(folder: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the TPSNet a trained-model folder describes and load its weights (eval mode).

    Returns:
        ``(model, config)``: the network and its model config (``image_size``, ``domain_names``, ...).

    Raises:
        FileNotFoundError: The weights or the config are missing.
        ConfigError: The config describes no model that can be built.
        WeightsFileError: The weights or a config file are damaged, or the weights belong to another
            architecture; the message names the file.
    """
    from .factory import create_tpsnet

    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: give the model/ folder (or output dir) of a finished run")
    config, source = _read_config_and_source(folder)
    normalisation = config.get("normalisation")
    try:  # the trained weights replace any pretrained ones: build the architecture only
        model = create_tpsnet(
            config["model"], config["embed_dim"], config["num_domains"], config["num_clusters"], pretrained=False,
            normalisation=(normalisation["rgb_mean"], normalisation["rgb_std"]) if normalisation else None,
        )
    except TPSNetError:  # names its own fix (e.g. the packaged CLIP of model.rgb_from_clip)
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{source} does not describe a model that can be built "
                          f"({type(error).__name__}: {first_line(error)}); copy the model folder again, or train "
                          "the run again") from None
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors reports damaged files with its own error type
        raise WeightsFileError(f"{weights} is damaged or truncated ({error}); train the run again, or copy the file "
                               "again") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as error:  # shapes or keys differ; text features of another width
        raise WeightsFileError(
            f"{weights} holds the weights of another model than {source} describes "
            f"(model.rgb_backbone={config['model'].get('rgb_backbone')!r}, embed_dim={config['embed_dim']}): "
            f"{_mismatch(model, state, error)}; use the weights and config of one run") from None
    return model.eval(), config


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not UTF-8, not JSON
        raise WeightsFileError(f"{path} is damaged ({first_line(error)}); copy the model folder again, or train "
                               "the run again") from None
    if not isinstance(data, dict):
        raise WeightsFileError(f"{path} is damaged (not a JSON object); copy the model folder again")
    return data


def _check_sizes(config: dict, path: Path, keys: Sequence[str] = _SIZES) -> None:
    if not all(_positive_int(config.get(key)) for key in keys):
        raise WeightsFileError(f"{path} is damaged (it needs positive integers {', '.join(keys)}); copy the model "
                               "folder again, or train the run again")


def _legacy_config(folder: Path) -> tuple[dict[str, Any], str]:
    """``model_meta.json`` (sizes) + the run's ``config.yaml`` (architecture), as one model config."""
    from ..training.config import read_config_file

    meta_file, run_config = folder / LEGACY_META_FILE, folder.parent / "config.yaml"
    for path in (meta_file, run_config):
        if not path.is_file():
            raise FileNotFoundError(f"{folder / MODEL_CONFIG_FILE} is missing (and so is {path}): give the model/ "
                                    "folder (or output dir) of a finished run")
    try:
        run = read_config_file(run_config)
    except ValueError as error:  # ConfigError: not UTF-8, not YAML (file and line named), not a mapping
        raise ConfigError(f"{error}; restore the run's config.yaml, or train the run again") from None
    if not all(isinstance(run.get(section), dict) for section in ("model", "data")):
        raise ConfigError(f"{run_config} has no model and data sections: it is not a run's config.yaml; restore it, "
                          "or train the run again")
    meta = _read_json(meta_file)
    _check_sizes(meta, meta_file, _SIZES[:3])
    size = meta.get("image_size") or run["data"].get("image_size")  # "auto" before sizes were recorded
    if not _positive_int(size):
        raise ConfigError(f"{run_config} gives no image size the model was trained on (data.image_size={size!r}); "
                          "restore the run's config.yaml and model_meta.json, or train it again")
    return {**meta, "model": run["model"], "image_size": size}, f"{run_config} and {meta_file}"


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor], error: Exception) -> str:
    """The differences between a state dict and a model, in one line: counts and the first of each."""
    expected = model.state_dict()
    shapes = [f"{key} is {list(state[key].shape)} in the file, {list(value.shape)} in the model"
              for key, value in expected.items() if key in state and state[key].shape != value.shape]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    parts = [f"{len(found)} {what} (first: {found[0]})" for found, what in (
        (shapes, "tensor shapes differ"), (missing, "tensors missing"), (unexpected, "unexpected tensors")) if found]
    return ", ".join(parts) or first_line(error)
