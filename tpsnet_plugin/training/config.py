"""Trainer configuration: packaged defaults, YAML files and ``section.key=value`` overrides.

The defaults live in ``default_config.yaml`` beside this module (every option, commented), so a
config file only states what differs. Unknown keys are rejected with the list of valid ones; keys
renamed in this release are still accepted, with a ``FutureWarning`` naming the new key.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


# Old key -> new key; accepted for one release (0.2) with a FutureWarning.
RENAMED_KEYS = {
    "stage1": "prompts",
    "stage2": "synergy",
    "stage2.alpha": "synergy.loss_weights.prototype",
    "stage2.beta": "synergy.loss_weights.image_text",
    "stage2.gamma": "synergy.loss_weights.instance",
    "stage2.delta": "synergy.loss_weights.miner",
}
# Removed key -> why; accepted and ignored for one release with a FutureWarning.
REMOVED_KEYS = {
    "model.phase_stream": "a side CUDA stream did not make the phase branch faster",
    "cluster.freeze_after": "no recipe used it",
}


def default_config() -> dict[str, Any]:
    """Return a fresh copy of the packaged default configuration."""
    text = resources.files(__package__).joinpath("default_config.yaml").read_text()
    return yaml.safe_load(text)


def _is_section(value: Any) -> bool:
    # An empty mapping default (e.g. model.rgb_kwargs: {}) is a free-form option, not a section.
    return isinstance(value, Mapping) and bool(value)


def _flat_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.extend(_flat_keys(value, path + ".") if _is_section(value) else [path])
    return keys


def _unknown_key_error(path: str, valid: Iterable[str]) -> KeyError:
    valid = sorted(valid)
    close = difflib.get_close_matches(path, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"Unknown config key '{path}'.{hint} Valid keys: {', '.join(valid)}")


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite keys renamed or removed in this release to today's names, warning once per key.

    Args:
        config: A nested (partial) config as read from YAML or ``--set``.

    Returns:
        A new nested dict that uses only current key names.
    """
    upgraded: dict[str, Any] = {}
    for path, value in _flat_items(config):
        if path in REMOVED_KEYS:
            warnings.warn(
                f"Config key '{path}' was removed ({REMOVED_KEYS[path]}) and is ignored; delete it from your "
                "config. It will be an error in the next release.",
                FutureWarning,
                stacklevel=3,
            )
            continue
        new = _renamed(path)
        if new != path:
            warnings.warn(
                f"Config key '{path}' is deprecated: use '{new}'. The old name will stop working in the next release.",
                FutureWarning,
                stacklevel=3,
            )
        _set_path(upgraded, new, value)
    return upgraded


def _renamed(path: str) -> str:
    # The longest renamed prefix wins: "stage2.alpha" before "stage2".
    for old in sorted(RENAMED_KEYS, key=len, reverse=True):
        if path == old or path.startswith(old + "."):
            return RENAMED_KEYS[old] + path[len(old):]
    return path


def _flat_items(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    # A non-empty mapping is descended into; an empty one (e.g. rgb_kwargs: {}) is a value.
    items = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not _is_free_form(path):
            items.extend(_flat_items(value, path + "."))
        else:
            items.append((path, value))
    return items


def _is_free_form(path: str) -> bool:
    # Options whose value is a mapping of arbitrary keys (timm kwargs): never renamed inside.
    return path.endswith("_kwargs")


def _set_path(nested: dict[str, Any], path: str, value: Any) -> None:
    node = nested
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def merge_config(base: dict[str, Any], override: Mapping[str, Any], _prefix: str = "") -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``, rejecting keys ``base`` lacks.

    Renamed keys in ``override`` are translated first (see :func:`upgrade_config`).
    """
    if not _prefix:
        override = upgrade_config(override or {})
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        path = f"{_prefix}{key}"
        if key not in merged:
            raise _unknown_key_error(path, _flat_keys(base, _prefix))
        if _is_section(merged[key]):
            if not isinstance(value, Mapping):
                raise TypeError(f"Config key '{path}' is a section; give its keys, e.g. {path}.<key>=...")
            merged[key] = merge_config(merged[key], value, path + ".")
        else:
            merged[key] = _coerce_like(merged[key], value, path)
    return merged


def _coerce_like(default: Any, value: Any, path: str) -> Any:
    # PyYAML (YAML 1.1) reads "5e-4" as a string and "1" as an int where a float is meant.
    if isinstance(default, float) and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            raise TypeError(f"Config key '{path}' expects a number, got {value!r}") from None
    return value


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn ``"section.key=value"`` into a nested dict; the value is parsed as YAML (``1e-3``, ``[1, 5]``, ``null``)."""
    if "=" not in assignment:
        raise ValueError(f"Override '{assignment}' must look like section.key=value")
    path, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    _set_path(nested, path.strip(), value)
    return nested


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """Build a full config: defaults, then the YAML file at ``path``, then ``sections``, then ``overrides``.

    Args:
        path: A YAML config file (e.g. ``configs/office_home.yaml``); None = defaults only.
        overrides: ``section.key=value`` strings (the CLI's ``--set``).
        **sections: Extra nested overrides, e.g. ``data={"root": "/data/OfficeHome"}``.

    Returns:
        The resolved config dict.
    """
    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}. See configs/ for the shipped ones.")
        config = merge_config(config, yaml.safe_load(path.read_text()) or {})
    config = merge_config(config, sections)
    for assignment in overrides:
        config = merge_config(config, parse_override(assignment))
    return config
