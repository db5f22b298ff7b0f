"""The builders: a config's data, model and setup, each usable on its own."""

import pytest
import torch

from tpsnet_plugin.training import build_data, build_model, build_stages


def test_the_parts_of_a_config(tmp_path, tiny_config):
    config = tiny_config(tmp_path, "synergy.batch_size=400", "synergy.m_per_cluster=4")
    data = build_data(config, show_progress=False)
    assert data.domain_names == ["handwritten-mnist", "printed"] and data.num_clusters == 10
    assert data.images.shape == (192, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.synergy_batch_size == 192 and data.warnings[-1].startswith("synergy.batch_size=400")
    stages = build_stages(config, data, with_prompts=False)
    assert [stage.name for stage in stages] == ["warmup", "cluster", "synergy"] and stages[-1].batch_size == 192


def test_an_embed_dim_the_clip_overrides_is_warned_about(tmp_path, tiny_config):
    config = tiny_config(tmp_path, "model.embed_dim=32")
    data = build_data(config, show_progress=False)
    with pytest.warns(UserWarning, match=r"model.embed_dim=32 is not used: .* the CLIP's, 64"):
        built = build_model(config, data, torch.device("cpu"), zero_shot=False)
    assert built.embed_dim == 64 and built.prompt_learner is not None
