"""The run's output folder: never overwritten by accident, never written by two runs at once.

A training process launched by ``accelerate launch`` also stops when its launcher is signalled
(``timeout``, a scheduler, ``kill PID``) instead of training on as an orphan.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

# What a run writes into its output dir; --overwrite removes exactly these.
RUN_ARTIFACTS = (
    "checkpoints", "model", "logs", "summary.json", "metrics.jsonl", "clustering.jsonl", "config.yaml",
    "retrieval_cache", "tsne.png",
)
LOCK_FILE = ".lock"


class OutputDirError(FileExistsError):
    """The output dir holds another run, or is being written by another process."""


class TrainingInterrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM/SIGINT, or its launcher went away)."""


def run_artifacts(output_dir: Path) -> list[Path]:
    """The files and folders of a previous run found in ``output_dir``."""
    output_dir = Path(output_dir)
    found = [output_dir / name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    return found + sorted(output_dir.glob("retrieval_*.png"))


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check ``output_dir`` against the run's intent before anything is written (writes nothing).

    Args:
        output_dir: The run's output folder.
        resume: Continue the run found there (``--resume``).
        overwrite: Replace the run found there (``--overwrite``); removes only run artifacts.

    Raises:
        OutputDirError: A previous run is there and neither flag was given.
        FileNotFoundError: ``resume`` on a folder that does not exist.
        ValueError: Both ``resume`` and ``overwrite``.
    """
    output_dir = Path(output_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
    if resume:
        if not output_dir.is_dir():
            raise FileNotFoundError(
                f"--resume: the output dir {output_dir} does not exist; check --output-dir, or start a new run "
                "without --resume"
            )
        return
    found = run_artifacts(output_dir)
    if found and not overwrite:
        names = ", ".join(p.name for p in found)
        raise OutputDirError(
            f"{output_dir} already holds a run ({names}). Continue it with --resume, replace it with --overwrite, "
            "or choose another --output-dir."
        )


def remove_run_artifacts(output_dir: Path) -> None:
    """Remove a previous run's files and folders from ``output_dir`` (nothing else)."""
    for path in run_artifacts(output_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class OutputDirLock:
    """An exclusive lock on the output dir for the lifetime of a run (released when the process dies).

    Args:
        output_dir: The run's output folder (created when missing).
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> OutputDirLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            file.seek(0)
            owner = file.read().strip() or "unknown"
            file.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputDirError(
                    f"{self.path.parent} is being written by another training process (pid {owner}). Wait for it "
                    "to finish or stop it, or choose another --output-dir."
                ) from None
            raise
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def stop_on_signals() -> None:
    """Turn SIGTERM (and SIGINT) into :class:`TrainingInterrupted`, and stop when the launcher dies.

    Checkpoints are written atomically, so stopping at any point keeps the last complete one. Under
    ``accelerate launch`` a signal to the launcher does not reach the training process; this makes
    the process follow its launcher: on Linux the kernel sends SIGTERM when the parent dies
    (``PR_SET_PDEATHSIG``), elsewhere a watcher thread notices the new parent.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    if not _launched_by_accelerate():
        return
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the launcher died before the call
            raise TrainingInterrupted("the launcher has already exited")
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _launched_by_accelerate() -> bool:
    # accelerate launch passes its settings to the training process in ACCELERATE_* variables.
    return any(name.startswith("ACCELERATE_") for name in os.environ) and "TORCHELASTIC_RUN_ID" not in os.environ


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
