"""Fixtures shared by the loss tests."""

import itertools
import multiprocessing
import pickle
import queue
import traceback

import pytest
import torch
import torch.distributed as dist

WORLD_SIZE = 2
_TIMEOUT_S = 120


def _run_rank(fn, rank, init_file, results):
    try:
        # one thread: as in DataLoader workers, a forked child must not reuse the parent's pool
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=WORLD_SIZE)
        try:
            # pickled by value here: torch's queue pickler would share storage with this process
            results.put((rank, pickle.dumps(fn(rank, WORLD_SIZE)), None))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, None, traceback.format_exc()))


@pytest.fixture
def two_gloo_ranks(tmp_path):
    """Run ``fn(rank, world_size)`` in two CPU processes joined by a gloo group.

    The processes are forked, so ``fn`` and what it reads need no pickling and no re-import;
    what ``fn`` returns is pickled back. Returns the results, by rank.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    context = multiprocessing.get_context("fork")
    counter = itertools.count()

    def run(fn):
        results = context.Queue()
        init_file = tmp_path / f"rendezvous-{next(counter)}"
        processes = [context.Process(target=_run_rank, args=(fn, rank, init_file, results))
                     for rank in range(WORLD_SIZE)]
        for process in processes:
            process.start()
        outputs, errors = {}, []
        try:
            for _ in processes:
                # after a failure the other rank may wait forever in a collective: wait briefly
                rank, payload, error = results.get(timeout=5 if errors else _TIMEOUT_S)
                if error is not None:
                    errors.append(f"rank {rank}:\n{error}")
                else:
                    outputs[rank] = pickle.loads(payload)
        except queue.Empty:
            errors.append("a rank gave no result in time")
        finally:
            for process in processes:
                process.join(timeout=0 if errors else _TIMEOUT_S)
                if process.is_alive():
                    process.kill()
                    process.join()
        if errors:
            pytest.fail("\n".join(errors))
        return [outputs[rank] for rank in range(WORLD_SIZE)]

    return run
