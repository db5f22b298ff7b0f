from pathlib import Path

import pytest

from tpsnet_plugin.training.config import default_config, load_config, parse_override

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_have_every_section():
    config = default_config()
    assert {"data", "model", "warmup", "cluster", "prompts", "synergy", "augment", "eval", "accelerate"} <= set(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_only_use_known_keys(path):
    config = load_config(path)
    assert len(config["data"]["domains"]) >= 2


def test_override_parses_yaml_values_and_coerces_floats():
    config = load_config(overrides=["synergy.lr_head=5e-4", "eval.ks=[50, 100]", "model.text_prior=false"])
    assert config["synergy"]["lr_head"] == pytest.approx(5e-4)
    assert config["eval"]["ks"] == [50, 100]
    assert config["model"]["text_prior"] is False
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}


def test_unknown_key_lists_close_matches():
    with pytest.raises(KeyError, match="synergy.lr_head"):
        load_config(overrides=["synergy.lrhead=1"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_value_type():
    with pytest.raises(TypeError, match="expects a number"):
        load_config(overrides=["synergy.loss_weights.prototype=abc"])


def test_free_form_mapping_options_accept_any_keys():
    config = load_config(overrides=["model.phase_kwargs={widths: [8, 16, 32, 64]}"])
    assert config["model"]["phase_kwargs"] == {"widths": [8, 16, 32, 64]}
