"""Stages and hooks passed in: the trainer runs what it is given, in order, and resumes it."""

import pytest

from tpsnet_plugin.training import (
    CheckpointHook,
    ClusteringStage,
    EndOfEpochHook,
    EvaluationHook,
    Stage,
    SynergyStage,
    TPSNetTrainer,
    TrainingState,
    build_hooks,
)

NO_TEXT = ("model.text_prior=false", "warmup.epochs=0", "synergy.epochs=2", "eval.every=0")


class CountingHook(EndOfEpochHook):
    def __init__(self):
        super().__init__(every=1)
        self.epochs = []

    def run(self, trainer, stage):
        self.epochs.append((stage.name, trainer.state.epoch))


class NoteStage(Stage):
    """A stage of the user's: records that it ran between clustering and synergy."""

    name = "note"

    def __init__(self):
        self.ran_with_labels = None

    def run(self, trainer):
        self.ran_with_labels = trainer.state.labels is not None


@pytest.mark.slow
def test_hooks_passed_in_replace_the_configs(tmp_path, tiny_config):
    hook = CountingHook()
    evaluation = EvaluationHook(every=0)  # after the last epoch only
    trainer = TPSNetTrainer(tiny_config(tmp_path, *NO_TEXT), hooks=[hook, evaluation])
    assert trainer.stages[-1].hooks == [hook, evaluation]
    assert [type(h).__name__ for h in build_hooks(trainer.config)] == ["LoggingHook", "ReclusterHook", "EvaluationHook",
                                                                 "CheckpointHook"]
    trainer.fit()
    assert hook.epochs == [("synergy", 1), ("synergy", 2)]


@pytest.mark.slow
def test_stages_passed_in_run_in_order_and_resume_by_name(tmp_path, tiny_config):
    config = tiny_config(tmp_path, *NO_TEXT)
    note = NoteStage()
    synergy = SynergyStage.from_config({**config["synergy"], "batch_size": 32},
                                       hooks=[EvaluationHook(every=0), CheckpointHook(every=1)])
    trainer = TPSNetTrainer(config, stages=[ClusteringStage(), note, synergy])
    assert trainer.state.stage_names == ("cluster", "note", "synergy", "done")
    summary = trainer.fit()
    assert note.ran_with_labels is True and summary["last_epoch"] == 2
    # its checkpoints name its own stages: the same stages resume them
    again = TPSNetTrainer(tiny_config(tmp_path, *NO_TEXT, "synergy.epochs=3"),
                          stages=[ClusteringStage(), NoteStage(), SynergyStage.from_config(
                              {**config["synergy"], "epochs": 3, "batch_size": 32}, hooks=[EvaluationHook(every=0)])])
    assert again.fit(resume=True)["last_epoch"] == 3


def test_the_trainer_is_the_context_stages_and_hooks_are_typed_against(tmp_path, tiny_config):
    from tpsnet_plugin.training.context import HookContext, StageContext

    trainer = TPSNetTrainer(tiny_config(tmp_path, *NO_TEXT))
    assert isinstance(trainer, StageContext) and isinstance(trainer, HookContext)
    assert not isinstance(object(), StageContext)


def test_stage_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        TrainingState(["cluster", "cluster"])
    state = TrainingState(["cluster", "note"])
    with pytest.raises(ValueError, match="'synergy', which this run does not have"):
        state.load_state_dict({"stage": "synergy", "epoch": 0, "labels": None, "keep_mask": None, "history": [],
                               "elapsed": 0.0})
