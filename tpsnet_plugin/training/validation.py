"""Checking a resolved config against the option schema: each value's type, words and range, then the
relations between options (``eval.ks``, ``cluster.anchor``, crop scales, widths)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from . import options
from .options import is_int, is_number


def validate_config(config: Mapping[str, Any]) -> None:
    """Check every value of a resolved config against its option: type, words, range, and the relations.

    Args:
        config: A full config (defaults merged).

    Raises:
        ConfigError: Naming the first invalid key, the value and what the key accepts.
    """
    for path, option in options.iter_options():
        _check_value(path, option, _get_path(config, path))
    _check_relations(config)


def _check_value(path: str, option: options.Option, value: Any) -> None:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"Config key '{path}' expects {expected}; got {value!r} ({type(value).__name__})")

    if option.check is not None:
        if not option.check(value):
            raise fail(option.accepts)
        return
    if option.nullable is not None:
        if value is None:
            return
        kind = option.nullable
        if kind is int and not is_int(value):
            raise fail("an integer or null")
        if kind is float and not (is_number(value) and math.isfinite(value) and value > 0):
            raise fail("a positive number or null")
        if kind is str and not (isinstance(value, str) and value.strip()):
            raise fail("a non-empty string or null")
        if kind is list and not isinstance(value, list):
            raise fail("a list or null")
        if kind is int and option.low is not None and value < option.low:
            raise ConfigError(f"Config key '{path}' must be >= {option.low} or null; got {value!r}")
        return
    default = option.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail("true or false")
    elif isinstance(default, int):
        if not is_int(value):
            raise fail("an integer")
    elif isinstance(default, float):
        if not is_number(value):
            raise fail("a number")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise fail("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise fail("a list")
    elif isinstance(default, Mapping) and not isinstance(value, Mapping):
        raise fail("a mapping, e.g. {key: value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"Config key '{path}' must be a finite number; got {value!r}")
    if option.choices is not None and value not in option.choices:
        hint = " (quote words YAML 1.1 reads as booleans)" if isinstance(value, bool) else ""
        raise ConfigError(f"Config key '{path}' must be one of {', '.join(option.choices)}; got {value!r}{hint}")
    low, high = option.low, option.high
    if is_number(value) and low is not None:
        too_low = value <= low if option.low_open else value < low
        if too_low or (high is not None and value > high):
            bound = f"> {low}" if option.low_open else f">= {low}"
            bound += f" and <= {high}" if high is not None else ""
            raise ConfigError(f"Config key '{path}' must be {bound}; got {value!r}")


def _check_relations(config: Mapping[str, Any]) -> None:
    data, synergy, ev = config["data"], config["synergy"], config["eval"]
    if len(data["domains"]) < 2 or len(set(data["domains"])) != len(data["domains"]):
        raise ConfigError(f"Config key 'data.domains' needs two or more different domains; got {data['domains']!r}")
    if not data["domains"] or not all(isinstance(d, str) for d in data["domains"]):
        raise ConfigError(f"Config key 'data.domains' must be a list of names; got {data['domains']!r}")
    ks = ev["ks"]
    if not ks or not all(is_int(k) and k >= 1 for k in ks) or len(set(ks)) != len(ks):
        raise ConfigError(f"Config key 'eval.ks' must be a non-empty list of different integers >= 1; got {ks!r}")
    anchor = config["cluster"]["anchor"]
    if is_int(anchor) and anchor >= len(data["domains"]):
        raise ConfigError(f"Config key 'cluster.anchor' is a domain index: 0 to {len(data['domains']) - 1} for "
                          f"{len(data['domains'])} domains (or smallest, or null); got {anchor}")
    if synergy["batch_size"] % synergy["m_per_cluster"]:
        raise ConfigError(
            f"Config key 'synergy.batch_size' ({synergy['batch_size']}) must be a multiple of "
            f"'synergy.m_per_cluster' ({synergy['m_per_cluster']})"
        )
    weights = synergy["loss_weights"]
    if not any(weights.values()):
        raise ConfigError("Every 'synergy.loss_weights' is 0: set at least one above 0 (e.g. prototype: 1.0)")
    crop_scale = config["augment"]["crop_scale"]
    pair = len(crop_scale) == 2 and all(is_number(v) for v in crop_scale)
    if not (pair and 0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ConfigError("Config key 'augment.crop_scale' must be [low, high] with 0 < low <= high <= 1; "
                          f"got {crop_scale!r}")
    model = config["model"]
    if model["rgb_from_clip"] and (model["pretrained"] or model["checkpoint_path"]):
        raise ConfigError("Config key 'model.rgb_from_clip' starts the RGB backbone from the CLIP image tower: "
                          "unset 'model.pretrained' and 'model.checkpoint_path' (one source of backbone weights)")
    if data["class_names"] is not None and not all(isinstance(n, str) and n.strip() for n in data["class_names"]):
        raise ConfigError(
            f"Config key 'data.class_names' must be a list of non-empty names; got {data['class_names']!r}")
    if config["model"]["embed_dim"] % config["model"]["num_heads"]:
        raise ConfigError("Config key 'model.embed_dim' must be a multiple of 'model.num_heads'")


def _get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node
