"""Checkpoints: complete-or-absent, and never unpickling arbitrary objects on resume."""

import copy
import pickle

import pytest
import torch
from accelerate import Accelerator

from tpsnet_plugin.training.checkpoint import (
    CheckpointError,
    ResumeMismatchError,
    check_resume_compatible,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tpsnet_plugin.training.config import load_config
from tpsnet_plugin.training.state import TrainingState


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def _accelerator_with_state(tmp_path):
    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    return accelerator, state


def test_save_and_load_restore_the_registered_state(tmp_path):
    accelerator, state = _accelerator_with_state(tmp_path)
    state.stage, state.epoch, state.labels = "synergy", 3, torch.arange(5)
    state.history.append({"stage": "synergy", "epoch": 3, "results": {"a->b": {"precision_at_1": 50.0}}})
    folder = save_checkpoint(accelerator, tmp_path / "checkpoints", "synergy-epoch003",
                             {"stage": "synergy", "epoch": 3})
    assert latest_checkpoint(tmp_path / "checkpoints") == folder
    state.stage, state.epoch, state.labels, state.history = "warmup", 0, None, []
    assert load_checkpoint(accelerator, folder) == {"stage": "synergy", "epoch": 3}
    assert (state.stage, state.epoch) == ("synergy", 3)
    assert torch.equal(state.labels, torch.arange(5))
    assert state.history[0]["results"]["a->b"]["precision_at_1"] == 50.0


def test_incomplete_checkpoint_is_not_latest(tmp_path):
    accelerator, _ = _accelerator_with_state(tmp_path)
    folder = save_checkpoint(accelerator, tmp_path / "checkpoints", "a", {"stage": "synergy", "epoch": 1})
    (folder / "checkpoint.json").unlink()  # as if the process died before the marker was written
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def test_load_refuses_a_pickle_payload_without_running_it(tmp_path):
    accelerator, _ = _accelerator_with_state(tmp_path)
    folder = save_checkpoint(accelerator, tmp_path / "checkpoints", "a", {"stage": "synergy", "epoch": 1})
    with open(folder / "custom_checkpoint_0.pkl", "wb") as file:
        pickle.dump(_Payload(), file)
    with pytest.raises(CheckpointError, match=r"custom_checkpoint_0.pkl holds pickled Python code \(.*_mark_ran\)"):
        load_checkpoint(accelerator, folder)
    assert not _Payload.ran


def test_a_value_refused_today_may_be_corrected_on_resume():
    # Written by a version that checked cluster.anchor only after the warm-up checkpoint: that value never
    # clustered anything, so resuming with the corrected one is the same experiment.
    config = load_config(overrides=["cluster.anchor=1"])
    written = copy.deepcopy(config)
    written["cluster"]["anchor"] = 7  # out of range for two domains: refused at load today
    check_resume_compatible({"config": written}, config, {})
    written["warmup"]["lr"] = 0.5  # a valid value that trained: still a difference
    with pytest.raises(ResumeMismatchError, match=r"warmup.lr: 0.5 in the checkpoint") as error:
        check_resume_compatible({"config": written}, config, {})
    assert "cluster.anchor" not in str(error.value)
