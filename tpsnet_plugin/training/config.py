"""Trainer configuration: packaged defaults, YAML files and ``section.key=value`` overrides.

Every option is declared once in :mod:`~tpsnet_plugin.training.options` (default, help, accepted
values, whether a resume may change it); ``default_config.yaml`` beside this module is rendered from
it, and a config file only states what differs. Unknown keys are rejected with the list of valid ones; keys
renamed in this release are still accepted, with a ``FutureWarning`` naming the new key.
"""

from __future__ import annotations

import copy
import difflib
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ConfigKeyError
from . import options
from .validation import validate_config

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


class ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only ``true``/``false`` are booleans.

    PyYAML follows YAML 1.1, where ``no``, ``off``, ``yes`` and ``on`` are booleans too, so the
    documented ``model.compile: off`` and ``accelerate.mixed_precision: no`` would arrive as
    ``False``; here they stay the words they are. A boolean option still accepts them (see
    :data:`BOOLEAN_WORDS`).
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# Words a boolean option accepts besides true/false (YAML 1.1 habits).
BOOLEAN_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def load_yaml(text: str) -> Any:
    """Parse config text with :class:`ConfigLoader` (``off``/``no`` stay strings)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def default_config() -> dict[str, Any]:
    """Return a fresh copy of the default configuration (:data:`~tpsnet_plugin.training.options.OPTIONS`)."""
    return options.defaults()


def _is_section(value: Any, path: str) -> bool:
    # A section is a non-empty mapping that is not a free-form option (model.rgb_kwargs: {widths: ...}).
    return isinstance(value, Mapping) and bool(value) and not _is_free_form(path)


def _unknown_key_error(path: str, valid: Iterable[str]) -> ConfigKeyError:
    valid = sorted(valid)
    close = difflib.get_close_matches(path, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigKeyError(f"Unknown config key '{path}'.{hint} Valid keys: {', '.join(valid)}")


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
        if _is_section(value, path):
            items.extend(_flat_items(value, path + "."))
        else:
            items.append((path, value))
    return items


def flatten_config(config: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """``{"section.key": value}`` for every option of a (nested) config; free-form mappings stay values."""
    return {path.replace(".", sep): value for path, value in _flat_items(config)}


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
            raise _unknown_key_error(path, [key for key, _ in _flat_items(base, _prefix)])
        if _is_section(merged[key], path):
            if not isinstance(value, Mapping):
                raise ConfigError(f"Config key '{path}' is a section; give its keys, e.g. {path}.<key>=...")
            merged[key] = merge_config(merged[key], value, path + ".")
        else:
            merged[key] = _coerce_like(merged[key], value, path)
    return merged


def _coerce_like(default: Any, value: Any, path: str) -> Any:
    if _is_free_form(path) and value is None:
        return {}  # null clears a free-form mapping
    if _is_free_form(path) and isinstance(value, Mapping):
        return dict(value)  # a free-form mapping is replaced as a whole, never merged key by key
    if isinstance(default, bool) and isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.lower()]
    # PyYAML (YAML 1.1) reads "5e-4" as a string and "1" as an int where a float is meant.
    if isinstance(default, float) and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"Config key '{path}' expects a number, got {value!r}") from None
    return value


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn ``"section.key=value"`` into a nested dict; the value is parsed as YAML (``1e-3``, ``[1, 5]``, ``null``)."""
    if "=" not in assignment:
        raise ConfigError(f"Override '{assignment}' must look like section.key=value")
    path, raw = assignment.split("=", 1)
    if not raw.strip():
        raise ConfigError(f"Override '{assignment}' has no value: give one, or write {path.strip()}=null to unset "
                          "the option")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError:
        raise ConfigError(f"Override '{assignment}': the value {raw!r} is not valid YAML "
                          "(quote strings with special characters; lists look like [1, 5])") from None
    nested: dict[str, Any] = {}
    _set_path(nested, path.strip(), value)
    return nested


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file (and line) and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}. See configs/ for the shipped ones.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                          "save it as UTF-8") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"Config file {path} is not valid YAML "
                          f"({problem} at{where or ' an unknown place'})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file {path} must hold a mapping of sections (e.g. `synergy: {{epochs: 10}}`), "
                          f"got a {type(data).__name__}")
    return dict(data)


def config_layers(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """A config file and the files it builds on, base first.

    A file may start from another with ``base: <file>`` (a path relative to the file, e.g.
    ``base: paper.yaml``): the base is read first and the file's own keys override it, key by
    key (free-form mappings whole). Bases can themselves have a base.

    Raises:
        ConfigError: A base that is missing, not a string, or that leads back to the file.
    """
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"Config file {path} is its own base (through {' -> '.join(p.name for p in _seen)}): "
                          "remove the circle of `base:` keys")
    data = read_config_file(path)
    base = data.pop("base", None)
    if base is None:
        return [data]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"Config file {path}: `base` must name the YAML file it starts from; got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"Config file {path} starts from base {base!r}, but {base_path} does not exist")
    return [*config_layers(base_path, (*_seen, path.resolve())), data]


def read_composed_config(path: str | Path) -> dict[str, Any]:
    """A config file with its bases merged in, as the options it states (not yet over the defaults)."""
    composed: dict[str, Any] = {}
    for layer in config_layers(path):
        for key_path, value in _flat_items(layer):
            _set_path(composed, key_path, value)
    return composed


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """Build a full config: defaults, then the YAML file at ``path``, then ``sections``, then ``overrides``.

    Args:
        path: A YAML config file (e.g. ``configs/office_home.yaml``), with its ``base`` files; None =
            defaults only.
        overrides: ``section.key=value`` strings (the CLI's ``--set``).
        **sections: Extra nested overrides, e.g. ``data={"root": "/data/OfficeHome"}``.

    Returns:
        The resolved config dict.
    """
    config = default_config()
    if path is not None:
        for layer in config_layers(path):  # the base first, each overlay on top
            config = merge_config(config, layer)
    config = merge_config(config, sections)
    for assignment in overrides:
        config = merge_config(config, parse_override(assignment))
    validate_config(config)
    return config


# ---------------------------------------------------------------------------------------------
# Validation: every value is checked at load time against its option (training/options.py), with
# the key named, so that a typo fails in a second instead of hours into a run.
