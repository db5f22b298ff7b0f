"""Progress: bars on a terminal, one line per loop when the output is a log file."""

import io

from tpsnet_plugin.training.progress import progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_log_output_gets_one_line_per_loop():
    stream = io.StringIO()
    assert list(progress(range(500), "stage 2 epoch 1", stream=stream)) == list(range(500))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stage 2 epoch 1: 500 steps in ")


def test_terminal_output_gets_a_bar():
    stream = FakeTerminal()
    assert list(progress(range(3), "warm-up 1", stream=stream)) == [0, 1, 2]
    assert "warm-up 1" in stream.getvalue() and "\r" in stream.getvalue()


def test_disabled_prints_nothing():
    stream = io.StringIO()
    assert list(progress(range(3), "x", enabled=False, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_random_streams_do_not_depend_on_where_the_output_goes():
    import torch
    from torch.utils.data import DataLoader

    states = []
    for stream, enabled in ((io.StringIO(), True), (FakeTerminal(), True), (io.StringIO(), False)):
        torch.manual_seed(0)
        for _ in progress(DataLoader(list(range(10)), batch_size=3), "x", enabled=enabled, stream=stream):
            pass
        states.append(torch.get_rng_state())
    assert all(torch.equal(states[0], state) for state in states[1:])
