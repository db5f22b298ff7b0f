"""The stage contract (``run(trainer)`` continuing from ``trainer.state``) and hooks inside a real run."""

import pytest
import torch

from tpsnet_plugin.training import (
    ClusteringStage,
    EndOfEpochHook,
    PromptStage,
    Stage,
    SynergyStage,
    TPSNetTrainer,
    WarmupStage,
)


class RecordingHook(EndOfEpochHook):
    def __init__(self):
        super().__init__(every=1)
        self.calls = []

    def run(self, context, stage):
        self.calls.append((stage.name, context.state.epoch, dict(stage.epoch_losses)))


def test_stages_follow_the_config(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))
    assert [type(s) for s in trainer.stages] == [WarmupStage, ClusteringStage, PromptStage, SynergyStage]
    assert [s.name for s in trainer.stages] == ["warmup", "cluster", "prompts", "synergy"]
    ablation = TPSNetTrainer(tiny_config(tmp_path / "b", "model.text_prior=false"))
    assert [s.name for s in ablation.stages] == ["warmup", "cluster", "synergy"]


@pytest.mark.slow
def test_fit_runs_each_stage_once_in_order_and_checkpoints_between(tmp_path, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, "synergy.epochs=2", "synergy.checkpoint_every=100"))
    order, saved = [], []
    for stage in trainer.stages:
        run = stage.run

        def wrapped(context, stage=stage, run=run):
            order.append((stage.name, context.state.stage, context.state.epoch))
            run(context)

        stage.run = wrapped
    save = trainer.checkpoints.save
    trainer.checkpoints.save = lambda tag, *args: saved.append(tag) or save(tag, *args)
    hook = RecordingHook()
    trainer.stages[-1].hooks.append(hook)
    trainer.fit()
    # each stage starts at epoch 0 with the state naming it; a checkpoint starts every later stage
    assert order == [("warmup", "warmup", 0), ("cluster", "cluster", 0), ("prompts", "prompts", 0),
                     ("synergy", "synergy", 0)]
    assert saved == ["cluster-start", "prompts-start", "synergy-start", "synergy-epoch002"]
    assert trainer.state.stage == "done"
    # the hook saw every synergy epoch, with that epoch's mean loss of every weighted term
    assert [(name, epoch) for name, epoch, _ in hook.calls] == [("synergy", 1), ("synergy", 2)]
    assert all(set(losses) == set(trainer.setup.losses.loss_weights) for _, _, losses in hook.calls)
    assert all(torch.isfinite(torch.tensor(list(losses.values()))).all() for _, _, losses in hook.calls)


@pytest.mark.slow
def test_a_custom_stage_is_a_run_method(tmp_path, tiny_config):
    class CountClusters(Stage):
        name = "cluster"

        def run(self, context):
            ClusteringStage().run(context)
            self.sizes = torch.bincount(context.state.labels, minlength=context.batches.num_clusters)

    trainer = TPSNetTrainer(tiny_config(tmp_path, "warmup.epochs=0", "synergy.epochs=1"))
    custom = CountClusters()
    trainer.stages[1] = custom
    trainer.fit()
    assert custom.sizes.sum().item() == len(trainer.data.dataset)


@pytest.mark.parametrize("position", [2, 3])
def test_label_stages_need_a_clustering_first(tmp_path, position, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, "warmup.epochs=0"))
    with pytest.raises(RuntimeError, match="needs pseudo-labels: run a ClusteringStage"):
        trainer.stages[position].run(trainer.stage_context)


@pytest.mark.parametrize(
    ("epochs", "min_steps", "steps_per_epoch", "expected"),
    [(3, 0, 10, 3), (1, 300, 12, 25), (1, 300, 400, 1), (30, 300, 12, 30), (2, 5, 0, 2)],
)
def test_min_steps_raise_the_epochs_of_small_datasets(epochs, min_steps, steps_per_epoch, expected):
    from tpsnet_plugin.training.stages import resolve_epochs

    assert resolve_epochs(epochs, min_steps, steps_per_epoch) == expected


@pytest.mark.slow
def test_min_steps_in_a_run(tmp_path, tiny_config):
    # 2 x 96 images: warm-up batches of 64 give 3 steps per epoch, synergy batches of 32 give 6.
    trainer = TPSNetTrainer(tiny_config(tmp_path, "warmup.min_steps=10", "synergy.epochs=1", "synergy.min_steps=12",
                                        "eval.every=0", "cluster.recluster_every=0"))
    summary = trainer.fit()
    assert trainer.stages[0].epochs == 4 and trainer.stages[-1].epochs == 2
    assert summary["last_epoch"] == 2


def test_min_steps_announces_the_epochs_it_gives():
    # warmup.min_steps=1e6 on 3 steps per epoch used to multiply the epochs silently
    printed = []

    class Reached(Exception):
        pass

    class Context:
        batches = range(100)
        accelerator = type("Acc", (), {"num_processes": 1, "print": staticmethod(printed.append)})()
        state = type("State", (), {"epoch": 0})()

        def learning_rates(self, lr=None):
            raise Reached

    stage = WarmupStage(epochs=2, batch_size=32, lr=0.1, temperature=0.2, within_domain=True, min_steps=1_000_000)
    with pytest.raises(Reached):
        stage.run(Context())
    assert stage.epochs == 333_334
    assert printed == ["warmup: 333334 epochs instead of warmup.epochs=2, to make warmup.min_steps=1000000 "
                       "optimizer steps at 3 steps per epoch"]
    printed.clear()
    with pytest.raises(Reached):
        WarmupStage(epochs=2, batch_size=32, lr=0.1, temperature=0.2, within_domain=True, min_steps=6).run(Context())
    assert printed == []  # 2 epochs x 3 steps already make 6 steps
