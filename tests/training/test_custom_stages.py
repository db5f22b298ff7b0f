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

    def run(self, context, stage):
        self.epochs.append((stage.name, context.state.epoch))


class NoteStage(Stage):
    """A stage of the user's: records that it ran between clustering and synergy."""

    name = "note"

    def __init__(self):
        self.ran_with_labels = None

    def run(self, context):
        self.ran_with_labels = context.state.labels is not None


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


def test_stages_and_hooks_get_a_context_of_the_run_not_the_trainer(tmp_path, tiny_config):
    from tpsnet_plugin.training.context import HookContext, StageContext

    config = tiny_config(tmp_path, *NO_TEXT)
    seen = {}

    class Probe(Stage):
        name = "probe"

        def run(self, context):
            seen["stage"] = context

    class ProbeHook(EndOfEpochHook):
        def run(self, context, stage):
            seen["hook"] = context

    synergy = SynergyStage.from_config({**config["synergy"], "epochs": 1, "batch_size": 32},
                                       hooks=[ProbeHook(), EvaluationHook(every=0)])
    TPSNetTrainer(config, stages=[ClusteringStage(), Probe(), synergy]).fit()
    assert type(seen["stage"]) is StageContext and type(seen["hook"]) is HookContext
    assert seen["stage"].hook_context is seen["hook"]
    assert len(seen["stage"].batches.dataset[0]) == 3  # image, domain, index: the batches carry no true label


def test_stage_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        TrainingState(["cluster", "cluster"])
    state = TrainingState(["cluster", "note"])
    with pytest.raises(ValueError, match="'synergy', which this run does not have"):
        state.load_state_dict({"stage": "synergy", "epoch": 0, "labels": None, "keep_mask": None, "history": [],
                               "elapsed": 0.0})
