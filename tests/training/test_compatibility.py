"""Runs written before this release keep working: resume continues them, retrieve loads their model."""

import shutil
from pathlib import Path

import pytest
import torch

from tpsnet_plugin.models import TPSNet
from tpsnet_plugin.training import TPSNetTrainer
from tpsnet_plugin.training.run_dir import OutputDirError

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_written_by_0.1.0_before_this_release"
WRITTEN_WITH = ("synergy.epochs=2", "synergy.checkpoint_every=1")


@pytest.fixture
def old_run(tmp_path):
    shutil.copytree(OLD_RUN, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_a_checkpoint_written_before_this_release_resumes(old_run, tiny_config):
    # no run marker, no file-content fingerprint, the old loss table: resumed, and one more epoch trains
    summary = TPSNetTrainer(tiny_config(old_run.parent, "synergy.epochs=3", "synergy.checkpoint_every=1")).fit(
        resume=True)
    assert summary["last_epoch"] == 3
    assert (old_run / "tpsnet_run.json").is_file()  # marked as a run of ours from now on
    assert (old_run / "model" / "config.json").is_file()


def test_a_run_written_before_the_marker_is_still_refused_as_a_run_and_not_overwritten_by_mistake(old_run,
                                                                                                   tiny_config):
    with pytest.raises(OutputDirError, match="already holds a run"):
        TPSNetTrainer(tiny_config(old_run.parent, *WRITTEN_WITH)).fit()


def test_a_model_written_before_config_json_loads(old_run):
    model = TPSNet.from_pretrained(old_run)  # model_meta.json and the run's config.yaml
    assert model.config["image_size"] == 16 and model.config["num_domains"] == 2
    images = torch.rand(2, 3, 16, 16)
    assert model(images).shape == (2, model.config["embed_dim"])
