from pathlib import Path

import pytest

from tpsnet_plugin.training.config import default_config, flatten_config, load_config, parse_override

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_have_every_section():
    config = default_config()
    assert set(config) == {"seed", "output_dir", "data", "model", "warmup", "cluster", "prompts", "synergy", "augment",
                           "eval", "accelerate"}


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
    with pytest.raises(ValueError, match="expects a number"):
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.text_prior=maybe", r"'model.text_prior' expects true or false"),
        ("model.text_prior=1", r"'model.text_prior' expects true or false"),
        ("synergy.epochs=12.7", r"'synergy.epochs' expects an integer"),
        ("synergy.epochs=ten", r"'synergy.epochs' expects an integer"),
        ("synergy.epochs=0", r"'synergy.epochs' must be >= 1"),
        ("data.num_clusters=0", r"'data.num_clusters' must be >= 2 or null"),
        ("data.num_clusters=1", r"'data.num_clusters' must be >= 2 or null"),
        ("data.subset_per_domain=0", r"'data.subset_per_domain' must be >= 1 or null"),
        ("data.num_clusters=2.5", r"'data.num_clusters' expects an integer or null"),
        ("eval.ks=[0, 5]", r"'eval.ks' must be a non-empty list of different integers >= 1"),
        ("eval.ks=[1, 5, 5]", r"'eval.ks' must be a non-empty list of different integers"),
        ("eval.ks=[]", r"'eval.ks' must be a non-empty list"),
        ("eval.ks=5", r"'eval.ks' expects a list"),
        ("eval.knn=annoy", r"'eval.knn' must be one of auto, faiss, torch"),
        ("synergy.m_per_cluster=3",
         r"'synergy.batch_size' \(128\) must be a multiple of 'synergy.m_per_cluster' \(3\)"),
        ("synergy.m_per_cluster=0", r"'synergy.m_per_cluster' must be >= 1"),
        ("cluster.keep_ratio=0", r"'cluster.keep_ratio' must be > 0 and <= 1"),
        ("cluster.anchor=-1", r"'cluster.anchor' expects \"smallest\", a domain index"),
        ("synergy.loss_weights.prototype=-1", r"'synergy.loss_weights.prototype' must be >= 0"),
        ("accelerate.mixed_precision=fp8", r"'accelerate.mixed_precision' must be one of no, fp16, bf16"),
        ("data.domains=[a]", r"'data.domains' needs two or more different domains"),
        ("model.rgb_kwargs=3", r"'model.rgb_kwargs' expects a mapping"),
        ("augment.amplitude_mix_ratio=0", r"'augment.amplitude_mix_ratio' must be > 0 and <= 1"),
        ("augment.amplitude_mix_p=1.5", r"'augment.amplitude_mix_p' must be >= 0 and <= 1"),
    ],
)
def test_bad_values_fail_at_load_time_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.brightness=.nan", r"'augment.brightness' must be a finite number; got nan"),
        ("warmup.lr=.inf", r"'warmup.lr' must be a finite number; got inf"),
        ("synergy.label_smoothing=.nan", r"'synergy.label_smoothing' must be a finite number"),
        ("synergy.loss_weights.miner=.nan", r"'synergy.loss_weights.miner' must be a finite number"),
        ("model.phase_amplitude=.nan", r"'model.phase_amplitude' expects a positive number or null"),
        ("augment.crop_scale=[.nan, 1.0]", r"'augment.crop_scale' must be \[low, high\]"),
        ("augment.crop_scale=[0.5]", r"'augment.crop_scale' must be \[low, high\].*got \[0.5\]"),
        ("augment.crop_scale=[0.2, 0.5, 1.0]", r"'augment.crop_scale' must be \[low, high\]"),
        ("cluster.anchor=2", r"'cluster.anchor' is a domain index: 0 to 1 for 2 domains"),
        ("model.clip_pretrained=''", r"'model.clip_pretrained' expects a non-empty string or null"),
        ("model.checkpoint_path=' '", r"'model.checkpoint_path' expects a non-empty string or null"),
        ("data.on_error=no", r"'data.on_error' must be one of raise, skip; got 'no'"),
        ("data.layout=on", r"'data.layout' must be one of auto, folder, office31, list; got 'on'"),
    ],
)
def test_values_every_range_check_used_to_let_through_are_refused_at_load(override, message):
    # NaN compares false with every bound, so it passed each range check (brightness=nan turned jitter off).
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_an_override_without_a_value_is_refused_instead_of_meaning_null():
    # `--set model.clip_pretrained=` used to mean null: a randomly initialised CLIP, silently.
    with pytest.raises(ValueError, match=r"'model.clip_pretrained=' has no value.*model.clip_pretrained=null"):
        load_config(overrides=["model.clip_pretrained="])
    assert load_config(overrides=["model.clip_pretrained=null"])["model"]["clip_pretrained"] is None


def test_documented_words_are_accepted_in_overrides_and_files(tmp_path):
    # YAML 1.1 reads off/no/on/yes as booleans; the documented values must arrive as the words they are.
    config = load_config(overrides=["model.compile=off", "accelerate.mixed_precision=no"])
    assert config["model"]["compile"] == "off"
    assert config["accelerate"]["mixed_precision"] == "no"
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  compile: off\n  text_prior: no\naccelerate:\n  mixed_precision: no\n"
                    "eval:\n  plots: yes\n")
    config = load_config(path)
    assert config["model"]["compile"] == "off" and config["accelerate"]["mixed_precision"] == "no"
    # a boolean option still takes the YAML 1.1 words
    assert config["model"]["text_prior"] is False and config["eval"]["plots"] is True


def test_a_free_form_mapping_is_replaced_as_a_whole(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model:\n  rgb_kwargs: {widths: [16, 32]}\n")
    assert load_config(path)["model"]["rgb_kwargs"] == {"widths": [16, 32]}
    for clear in ("model.rgb_kwargs={}", "model.rgb_kwargs=null"):
        assert load_config(path, [clear])["model"]["rgb_kwargs"] == {}
    replaced = load_config(path, ["model.rgb_kwargs={drop_rate: 0.1}"])["model"]["rgb_kwargs"]
    assert replaced == {"drop_rate": 0.1}  # widths gone: a timm backbone without that argument can be chosen


def test_all_loss_weights_zero_is_an_error():
    overrides = [f"synergy.loss_weights.{name}=0" for name in ("prototype", "image_text", "instance", "miner")]
    with pytest.raises(ValueError, match="Every 'synergy.loss_weights' is 0"):
        load_config(overrides=overrides)


def test_valid_optional_and_integer_values_pass():
    config = load_config(overrides=["data.num_clusters=7", "cluster.anchor=1", "cluster.anchor=null",
                                    "synergy.lr_head=1", "model.phase_amplitude=100"])
    assert config["data"]["num_clusters"] == 7 and config["synergy"]["lr_head"] == 1.0


def test_fp16_without_a_gpu_says_so(tmp_path):
    import torch

    from tpsnet_plugin.training import build_accelerator

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 can run")
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        build_accelerator({"mixed_precision": "fp16", "gradient_accumulation_steps": 1, "log_with": "none"}, tmp_path)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("synergy:\n  epochs: 3\n  lr_head: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML .* line 4"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- synergy\n- epochs\n")
    with pytest.raises(ValueError, match="must hold a mapping of sections"):
        load_config(path)


def test_non_utf8_config_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.yaml is not UTF-8"):
        load_config(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffsynergy:\n  epochs: 3\n".encode())
    assert load_config(path)["synergy"]["epochs"] == 3


def test_malformed_override_value():
    with pytest.raises(ValueError, match=r"Override 'eval.ks=\[1, 5': the value .* is not valid YAML"):
        load_config(overrides=["eval.ks=[1, 5"])


def test_image_size_auto_or_pixels():
    assert load_config(overrides=["data.image_size=auto"])["data"]["image_size"] == "auto"
    for bad in ("big", "4", "12.5"):
        with pytest.raises(ValueError, match=r"'data.image_size' expects an image side in pixels >= 8, or \"auto\""):
            load_config(overrides=[f"data.image_size={bad}"])


def test_a_config_file_builds_on_a_base(tmp_path):
    (tmp_path / "base.yaml").write_text("synergy:\n  epochs: 7\n  lr_head: 0.01\nmodel:\n  rgb_kwargs: {widths: [8]}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nsynergy:\n  epochs: 9\nmodel:\n  rgb_kwargs: {depth: 2}\n")
    config = load_config(tmp_path / "run.yaml")
    assert config["synergy"]["epochs"] == 9 and config["synergy"]["lr_head"] == 0.01  # key by key
    assert config["model"]["rgb_kwargs"] == {"depth": 2}  # a free-form mapping whole
    assert "base" not in config


def test_the_paper_recipes_share_one_base_and_differ_only_in_their_data(repo):
    configs = {name: load_config(repo / "tpsnet_plugin" / "configs" / f"{name}.yaml")
               for name in ("office_home", "office31", "domainnet")}
    flat = {name: flatten_config(config) for name, config in configs.items()}
    differing = {key for key in flat["office_home"] if len({repr(f[key]) for f in flat.values()}) > 1}
    assert differing == {"output_dir", "data.domains", "data.layout", "data.classes", "data.num_clusters", "eval.ks"}
    assert configs["office_home"]["model"]["clip_pretrained"] == "openai"  # from _paper.yaml


@pytest.mark.parametrize(("content", "message"), [
    ("base: missing.yaml\n", "starts from base 'missing.yaml', but .* does not exist"),
    ("base: [a]\n", "`base` must name the YAML file"),
    ("base: loop.yaml\n", "is its own base"),
])
def test_a_bad_base_is_named(tmp_path, content, message):
    (tmp_path / "loop.yaml").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path / "loop.yaml")
