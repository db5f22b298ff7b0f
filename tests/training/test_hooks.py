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

    def run(self, context, stage):
        self.calls.append((stage.name, context.state.epoch))


def test_call_runs_only_when_due():
    hook = RecordingHook(every=2)
    stage = SimpleNamespace(name="synergy", epochs=3)
    for epoch in (1, 2, 3):
        hook(SimpleNamespace(state=SimpleNamespace(epoch=epoch)), stage)
    assert hook.calls == [("synergy", 2), ("synergy", 3)]


def test_recluster_and_evaluation_share_one_embedding_pass():
    calls = []

    class Labelling:
        def cluster(self, embeddings):
            calls.append(("cluster", embeddings))

        def init_prototypes(self, embeddings):
            calls.append(("prototypes", embeddings))

    class Evaluator:
        def evaluate(self, embeddings):
            calls.append(("evaluate", embeddings))
            return {}

        def label_free_score(self, embeddings, pseudo_labels):
            calls.append(("label_free", embeddings, pseudo_labels))
            return 0.0

    class Records:
        def record_evaluation(self, results, label_free_score=None):
            calls.append("record")

    def epoch_embeddings():
        calls.append("embed")
        return "E"

    context = SimpleNamespace(state=SimpleNamespace(epoch=2, labels="L"), epoch_embeddings=epoch_embeddings,
                              labelling=Labelling(), evaluator=Evaluator(), records=Records())
    stage = SimpleNamespace(name="synergy", epochs=4)
    ReclusterHook(every=2)(context, stage)
    EvaluationHook(every=2)(context, stage)
    assert calls == ["embed", ("cluster", "E"), ("prototypes", "E"), "embed", ("evaluate", "E"),
                     ("label_free", "E", "L"), "record"]


def test_epoch_embeddings_are_computed_once_per_stage_and_epoch():
    from tpsnet_plugin.training.run_evaluation import EpochEmbeddings

    passes = []

    def embed(synergy=True):
        passes.append(synergy)
        return len(passes)

    state = SimpleNamespace(stage="cluster", epoch=0)
    embeddings = EpochEmbeddings(embed, state)
    assert embeddings() == embeddings() == 1 and passes == [False]  # the backbone's feature before synergy
    state.stage, state.epoch = "synergy", 1
    assert embeddings() == embeddings() == 2
    state.stage = "done"  # the final embeddings are the last synergy epoch's
    assert embeddings() == 2
    state.epoch = 2
    assert embeddings() == 3 and passes == [False, True, True]
