"""One declaration per option: the defaults, the shipped YAML, validation and the resume list come from it."""

from pathlib import Path

import pytest

from tpsnet_plugin.training import options
from tpsnet_plugin.training.checkpoint import SAFE_ON_RESUME
from tpsnet_plugin.training.config import default_config, flatten_config, load_config, load_yaml, validate_config

YAML = Path(options.__file__).with_name("default_config.yaml")


def test_the_shipped_yaml_is_rendered_from_the_options():
    assert YAML.read_text() == options.render_yaml(), "edit training/options.py, then run options.write_yaml()"
    assert load_yaml(YAML.read_text()) == default_config()


def test_every_default_passes_its_own_option():
    validate_config(default_config())
    for path, option in options.iter_options():
        if option.choices is not None:
            assert option.default in option.choices, path
        if option.check is not None:
            assert option.check(option.default) and option.accepts, path


def test_the_resume_list_is_the_options_marked_safe():
    marked = {path for path, option in options.iter_options() if option.resume_safe}
    assert set(SAFE_ON_RESUME) == marked
    assert {"synergy.epochs", "synergy.lr_backbone", "eval.ks", "data.root"} <= marked
    assert "synergy.batch_size" not in marked and "seed" not in marked


def test_every_config_key_is_an_option():
    assert list(flatten_config(default_config())) == [path for path, _ in options.iter_options()]


@pytest.mark.parametrize(("path", "bad"), [
    (path, value) for path, option in options.iter_options() for value in (
        ([option.choices[0] + "x"] if option.choices else [])
        + ([option.low - 1] if option.low is not None and option.nullable is None else [])
        + ([option.high + 1] if option.high is not None else []))
])
def test_each_declared_choice_and_bound_is_enforced(path, bad):
    with pytest.raises(ValueError, match=f"'{path}'"):
        load_config(overrides=[f"{path}={bad!r}" if isinstance(bad, str) else f"{path}={bad}"])
