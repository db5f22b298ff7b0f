"""End-of-epoch hook scheduling: every N epochs, at the end or not, and the shared embedding pass."""

from types import SimpleNamespace

import pytest

from tpsnet_plugin.training import CheckpointHook, EndOfEpochHook, EvaluationHook, ReclusterHook


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        (EvaluationHook(every=2), [2, 4, 5]),
        (EvaluationHook(every=0), [5]),
        (CheckpointHook(every=3), [3, 5]),
        (ReclusterHook(every=2), [2, 4]),  # never after the last epoch: those labels would train nothing
        (ReclusterHook(every=1), [1, 2, 3, 4]),
        (ReclusterHook(every=0), []),
    ],
)
def test_hooks_run_on_their_epochs(hook, expected):
    assert [epoch for epoch in range(1, 6) if hook.due(epoch, last_epoch=5)] == expected


class RecordingHook(EndOfEpochHook):
    def __init__(self, every):
        super().__init__(every)
        self.calls = []

    def run(self, trainer, stage):
        self.calls.append((stage.name, trainer.state.epoch))


def test_call_runs_only_when_due():
    hook = RecordingHook(every=2)
    stage = SimpleNamespace(name="synergy", epochs=3)
    for epoch in (1, 2, 3):
        hook(SimpleNamespace(state=SimpleNamespace(epoch=epoch)), stage)
    assert hook.calls == [("synergy", 2), ("synergy", 3)]


def test_recluster_and_evaluation_share_one_embedding_pass():
    calls = []

    class Trainer:
        state = SimpleNamespace(epoch=2)

        def epoch_embeddings(self):
            calls.append("embed")
            return "E"

        def cluster(self, embeddings):
            calls.append(("cluster", embeddings))

        def init_prototypes(self, embeddings):
            calls.append(("prototypes", embeddings))

        def evaluate(self, embeddings):
            calls.append(("evaluate", embeddings))
            return {}

        def label_free_score(self, embeddings):
            calls.append(("label_free", embeddings))
            return 0.0

        def record_evaluation(self, results, label_free_score=None):
            calls.append("record")

    stage = SimpleNamespace(name="synergy", epochs=4)
    trainer = Trainer()
    ReclusterHook(every=2)(trainer, stage)
    EvaluationHook(every=2)(trainer, stage)
    assert calls == ["embed", ("cluster", "E"), ("prototypes", "E"), "embed", ("evaluate", "E"), ("label_free", "E"),
                     "record"]
