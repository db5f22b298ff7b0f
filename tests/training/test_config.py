from pathlib import Path

import pytest

from tpsnet_plugin.training.config import default_config, load_config, parse_override

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_have_every_section():
    config = default_config()
    assert set(config) == {"seed", "output_dir", "data", "model", "warmup", "cluster", "prompts", "synergy", "augment", "eval", "accelerate"}


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


@pytest.mark.parametrize(
    ("old", "new_path"),
    [
        ("stage2.alpha=2", ("synergy", "loss_weights", "prototype")),
        ("stage2.beta=2", ("synergy", "loss_weights", "image_text")),
        ("stage2.gamma=2", ("synergy", "loss_weights", "instance")),
        ("stage2.delta=2", ("synergy", "loss_weights", "miner")),
        ("stage2.epochs=2", ("synergy", "epochs")),
        ("stage1.epochs=2", ("prompts", "epochs")),
    ],
)
def test_renamed_keys_still_work_with_a_warning_naming_the_new_key(old, new_path):
    with pytest.warns(FutureWarning, match=".".join(new_path).replace(".", r"\.")):
        config = load_config(overrides=[old])
    node = config
    for part in new_path:
        node = node[part]
    assert node == 2


def test_renamed_sections_in_a_yaml_file(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("stage2:\n  alpha: 0.5\n  epochs: 3\nstage1:\n  lr: 0.01\n")
    with pytest.warns(FutureWarning):
        config = load_config(path)
    assert config["synergy"]["loss_weights"]["prototype"] == 0.5
    assert config["synergy"]["epochs"] == 3 and config["prompts"]["lr"] == 0.01
    assert "stage2" not in config and "stage1" not in config


@pytest.mark.parametrize("removed", ["model.phase_stream=true", "cluster.freeze_after=3"])
def test_removed_keys_are_ignored_with_a_warning(removed):
    with pytest.warns(FutureWarning, match="removed"):
        config = load_config(overrides=[removed])
    section, key = removed.split("=")[0].split(".")
    assert key not in config[section]


def test_current_names_do_not_warn(recwarn):
    load_config(overrides=["synergy.loss_weights.image_text=0", "prompts.epochs=1"])
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_loss_weights_reject_unknown_terms():
    with pytest.raises(KeyError, match="synergy.loss_weights.prototype"):
        load_config(overrides=["synergy.loss_weights.prototyp=1"])


def test_no_section_reads_another_sections_keys():
    # Each stage is configured by its own section: the synergy instance loss has its own switch.
    config = load_config(overrides=["warmup.within_domain=false"])
    assert config["synergy"]["instance_within_domain"] is True
