"""The run's output folder: never overwritten by accident, never written by two runs at once.

A training process launched by ``accelerate launch`` also stops when its launcher is signalled
(``timeout``, a scheduler, ``kill PID``) instead of training on as an orphan.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import ConfigError, TPSNetError
from ..utils.io import atomic_write_text

# Written first into every run's output dir: a folder is a run of this package only if it holds it.
RUN_MARKER = "tpsnet_run.json"
# What a run writes into its output dir; --overwrite removes exactly these.
RUN_ARTIFACTS = (
    RUN_MARKER, "checkpoints", "model", "logs", "summary.json", "metrics.jsonl", "clustering.jsonl", "config.yaml",
    "retrieval_cache", "tsne.png",
)
LOCK_FILE = ".lock"


class OutputDirError(TPSNetError, FileExistsError):
    """The output dir holds another run, or is being written by another process."""


class TrainingInterrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM/SIGINT, or its launcher went away)."""


_stop_reason: str | None = None  # set when a stop signal arrived (see stop_on_signals)


def stop_requested() -> str | None:
    """Why the process was asked to stop (``"stopped by SIGTERM"``), or None."""
    return _stop_reason


def raise_if_stopped() -> None:
    """Raise :class:`TrainingInterrupted` when a stop signal arrived (also when its first raise was lost)."""
    if _stop_reason is not None:
        raise TrainingInterrupted(_stop_reason)


def run_artifacts(output_dir: Path) -> list[Path]:
    """The files and folders of a previous run found in ``output_dir``."""
    output_dir = Path(output_dir)
    found = [output_dir / name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    return found + sorted(output_dir.glob("retrieval_*.png"))


def is_tpsnet_run(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds a run of this package: its marker, or (runs written before the
    marker existed) a complete checkpoint."""
    output_dir = Path(output_dir)
    return (output_dir / RUN_MARKER).is_file() or any((output_dir / "checkpoints").glob("*/checkpoint.json"))


def write_run_marker(output_dir: Path) -> None:
    """Mark ``output_dir`` as a run of this package (before any other run file is written)."""
    from .. import __version__  # the package imports this module

    marker = {"written_by": "tpsnet_plugin", "version": __version__}
    atomic_write_text(Path(output_dir) / RUN_MARKER, json.dumps(marker))


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check ``output_dir`` against the run's intent before anything is written (writes nothing).

    Args:
        output_dir: The run's output folder.
        resume: Continue the run found there (``--resume``).
        overwrite: Replace the run found there (``--overwrite``); removes only run artifacts.

    Raises:
        OutputDirError: A previous run is there and neither flag was given, or the folder holds
            files with a run's names (``config.yaml``, ``logs``, ...) that no run of this package
            wrote (even with ``overwrite``: only a run of ours is ever replaced).
        FileNotFoundError: ``resume`` on a folder that does not exist.
        ValueError: Both ``resume`` and ``overwrite``.
    """
    output_dir = Path(output_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    if resume:
        if not output_dir.is_dir():
            raise FileNotFoundError(
                f"--resume: the output dir {output_dir} does not exist; check --output-dir, or start a new run "
                "without --resume"
            )
        return
    found = run_artifacts(output_dir)
    names = ", ".join(p.name for p in found)
    if found and not is_tpsnet_run(output_dir):
        raise OutputDirError(
            f"{output_dir} holds {names}, which no tpsnet_plugin run wrote (there is no {RUN_MARKER}); nothing there "
            "is replaced, not even with --overwrite. Choose another --output-dir (e.g. a new subfolder)."
        )
    if found and not overwrite:
        raise OutputDirError(
            f"{output_dir} already holds a run ({names}). Continue it with --resume, replace it with --overwrite, "
            "or choose another --output-dir."
        )


def check_output_dir_outside(output_dir: Path, data_root: str | os.PathLike) -> None:
    """Refuse an output dir inside the dataset: its run folders would be read as domains or classes.

    Raises:
        OutputDirError: ``output_dir`` is ``data_root`` or inside it.
    """
    output, root = Path(output_dir).resolve(), Path(data_root).resolve()
    if output == root or root in output.parents:
        raise OutputDirError(
            f"--output-dir {output_dir} is inside the dataset root {data_root}: the run's folders would be read as a "
            "domain or a class by later runs. Choose an --output-dir outside the dataset."
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
        global _stop_reason
        _stop_reason = f"stopped by {signal.Signals(signum).name}"
        if hasattr(signal, "SIGCHLD"):
            # DataLoader workers get the same signal (same process group) and die; torch's SIGCHLD handler
            # would then raise "worker killed by signal" on top of this stop.
            signal.signal(signal.SIGCHLD, lambda *_: None)
        raise TrainingInterrupted(_stop_reason)

    signal.signal(signal.SIGTERM, interrupt)
    # A signal that lands in a finalizer or an at-fork callback (DataLoader workers start by fork) raises
    # where Python only prints "Exception ignored": drop that print; the run stops at its next step
    # (raise_if_stopped), with the one-line message.
    previous_hook = sys.unraisablehook

    def quiet_stop(unraisable):
        if not isinstance(unraisable.exc_value, TrainingInterrupted):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_stop
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
