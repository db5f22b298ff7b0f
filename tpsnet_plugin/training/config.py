"""Trainer configuration: packaged defaults, YAML files and ``section.key=value`` overrides.

The defaults live in ``default_config.yaml`` beside this module (every option, commented), so a
config file only states what differs. Unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


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


def merge_config(base: dict[str, Any], override: Mapping[str, Any], _prefix: str = "") -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``, rejecting keys ``base`` lacks."""
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
    node = nested
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
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
