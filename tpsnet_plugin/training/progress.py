"""Progress reporting: bars on a terminal, one line per loop in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, enabled: bool = True, stream=None) -> Iterable[T]:
    """Wrap a loop with a progress bar on a terminal, or with one summary line when output is a file.

    On output that is not a terminal (a log file, a scheduler's capture) every bar refresh would
    become a line; there the loop prints ``<desc>: <n> steps in <s> s`` once, when it ends.

    Args:
        iterable: The loop.
        desc: Its label.
        enabled: False prints nothing (e.g. on processes other than the main one).
        stream: Where to write; default ``sys.stderr``.
    """
    stream = stream if stream is not None else sys.stderr
    # Every path iterates through tqdm: a loop then draws the same random numbers (DataLoader
    # seeds) whether its output is a terminal, a log file or switched off, so results do not
    # depend on where the output goes.
    if not enabled:
        return tqdm(iterable, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, leave=False, file=stream)
    return _summarised(tqdm(iterable, disable=True), desc, stream)


def stoppable_progress(iterable: Iterable[T], desc: str, enabled: bool = True) -> Iterator[T]:
    """:func:`progress` for the training loops: every step first checks for a stop signal (SIGINT/SIGTERM),
    so a signal that lands while a DataLoader worker starts is never lost."""
    from .run_dir import raise_if_stopped

    for item in progress(iterable, desc, enabled=enabled):
        raise_if_stopped()
        yield item


def _summarised(iterable: Iterable[T], desc: str, stream) -> Iterator[T]:
    start, steps = time.perf_counter(), 0
    for item in iterable:
        steps += 1
        yield item
    print(f"{desc}: {steps} steps in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
