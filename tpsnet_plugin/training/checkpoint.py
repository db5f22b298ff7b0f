"""Atomic, resumable checkpoints around ``Accelerator.save_state``.

Everything resumable is registered with the accelerator (model, optimizer, RNG states, and with
``register_for_checkpointing`` the training state, prototypes, clusterer and prompts), so one
``save_state`` writes it all. Each checkpoint is written to a hidden temporary folder and renamed
into place only when complete, then a ``latest`` pointer file is replaced atomically: a run killed
at any moment leaves the previous checkpoint intact. Before ``load_state``, every registered-object
file is loaded once with ``weights_only=True``, so a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import copy
import errno
import functools
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file as load_safetensors

from ..errors import TPSNetError, describe_unsafe_pickle
from ..utils.io import atomic_write_text
from . import options
from .config import ConfigError, default_config, flatten_config, validate_config

META = "checkpoint.json"
LATEST = "latest"


def save_checkpoint(accelerator: Accelerator, root: Path, tag: str, meta: dict[str, Any], keep: int = 2) -> Path:
    """Save every registered state under ``root/tag`` (atomic), then point ``latest`` at it.

    Args:
        accelerator: The run's accelerator; every process must call this.
        root: Folder holding all checkpoints of a run.
        tag: Checkpoint name, e.g. ``"synergy-epoch003"``.
        meta: JSON-serialisable facts about the checkpoint (stage, epoch), written last as the
            marker of a complete checkpoint.
        keep: How many most recent checkpoints to keep.

    Returns:
        The final checkpoint folder.
    """
    root = Path(root)
    final, tmp = root / tag, root / f".tmp-{tag}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / META).write_text(json.dumps(meta))
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        if _out_of_space(error, root):
            raise OSError(errno.ENOSPC, f"No space left on device while writing checkpoint {final}; {kept}. "
                          "Free disk space, then run again with --resume.") from error
        raise OSError(getattr(error, "errno", None) or errno.EIO,
                      f"Could not write checkpoint {final} ({error}); {kept}.") from error
    if accelerator.is_main_process:
        if final.exists():
            old = root / f".old-{tag}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        atomic_write_text(root / LATEST, tag)
        ordered = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for stale in ordered[:-keep]:
            if stale != final:
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


def _out_of_space(error: BaseException, root: Path) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(root).free < 2**26
    except OSError:
        return False


def latest_checkpoint(root: Path, log: Callable[[str], Any] | None = None) -> Path | None:
    """The checkpoint folder ``root/latest`` names; if it is missing or incomplete, the newest complete one.

    Args:
        root: Folder holding all checkpoints of a run.
        log: Called with a message when falling back from the ``latest`` pointer.

    Returns:
        A complete checkpoint folder, or None when there is none.
    """
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / META).is_file():
            return folder
    complete = sorted(
        (p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".") and (p / META).is_file()),
        key=lambda p: (p.stat().st_mtime, p.name),
    ) if root.is_dir() else []
    if not complete:
        return None
    if log is not None and pointer.is_file():
        log(f"{pointer} names {pointer.read_text().strip()!r}, which is missing or incomplete: "
            f"using the newest complete checkpoint, {complete[-1].name}")
    return complete[-1]


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    """The meta dict a checkpoint was saved with (stage, epoch, config, dataset fingerprint)."""
    path = Path(folder) / META
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"Checkpoint file {path} is unreadable ({error}); the checkpoint is damaged: "
                           "remove the folder to resume from the one before it.") from error


class CheckpointError(TPSNetError, RuntimeError):
    """A checkpoint file is damaged or unsafe to load; the message names it."""


# Options that may change on resume; everything else must match the checkpoint's config.
SAFE_ON_RESUME = options.resume_safe_paths()  # the options marked resume_safe


class ResumeMismatchError(TPSNetError, ValueError):
    """The run to resume was made with another config or dataset."""


def check_resume_compatible(meta: Mapping[str, Any], config: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint made with a different experiment.

    Args:
        meta: The checkpoint's meta dict (:func:`read_checkpoint_meta`).
        config: The current resolved config.
        dataset: The current dataset fingerprint.

    An option the checkpoint does not know (added to the package after it was written) is accepted
    at its default value, which keeps the old behaviour; at any other value it is a difference.

    Raises:
        ResumeMismatchError: Listing every differing option (outside ``SAFE_ON_RESUME``) and dataset property.
    """
    differences = []
    saved_config = meta.get("config")
    if saved_config is not None:
        saved, current = flatten_config(saved_config), flatten_config(config)
        defaults = flatten_config(default_config())
        for path in sorted(set(saved) | set(current)):
            if any(path == safe or path.startswith(safe + ".") for safe in SAFE_ON_RESUME):
                continue
            if path not in saved and path in defaults and current.get(path) == defaults[path]:
                continue  # an option newer than the checkpoint, at its default (= the old behaviour)
            old, new = saved.get(path, "<absent>"), current.get(path, "<absent>")
            if old != new and path in saved and not _valid_today(config, path, old):
                continue  # a value refused today (checked too late when it was written) never trained: fix it
            if old != new:
                differences.append(f"config {path}: {old!r} in the checkpoint, {new!r} now")
    saved_data = meta.get("dataset")
    if saved_data is not None:
        for key in ("domains", "classes", "sizes", "content_sha256", "files_sha256"):
            if key not in saved_data and key == "files_sha256":
                continue  # a checkpoint written before file contents were fingerprinted
            if saved_data.get(key) != dataset.get(key):
                what = {"content_sha256": "the file list or labels",
                        "files_sha256": "the image files' contents"}.get(key, key)
                differences.append(f"dataset {what}: {_short(saved_data.get(key))} in the checkpoint, "
                                   f"{_short(dataset.get(key))} now")
    if differences:
        raise ResumeMismatchError(
            "Cannot resume: this is not the experiment the checkpoint belongs to.\n  " + "\n  ".join(differences)
            + f"\nOnly these options may change on resume: {', '.join(SAFE_ON_RESUME)}. Start a new run in "
            "another --output-dir (or replace this one with --overwrite)."
        )


def _valid_today(config: Mapping[str, Any], path: str, value: Any) -> bool:
    """Whether ``config`` with ``path`` set to ``value`` passes today's validation."""
    trial = copy.deepcopy(dict(config))
    node = trial
    *sections, key = path.split(".")
    for section in sections:
        if not isinstance(node.get(section), dict):
            return True  # not an option of today's config: leave it to the comparison
        node = node[section]
    node[key] = value
    try:
        validate_config(trial)
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_weights_file(path, fix: str) -> None:
    """Read ``path`` once without unpickling anything: safetensors, or ``torch.load(weights_only=True)``.

    Args:
        path: A weights or state file.
        fix: What the user should do, appended to the message.

    Raises:
        CheckpointError: The file is missing, damaged or truncated, or holds pickled Python code
            (objects) instead of plain tensors; the message names the file and ``fix``, never
            torch's advice to load it with ``weights_only=False``.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            load_safetensors(str(path))
        else:
            torch.load(path, map_location="cpu", weights_only=True)
        return
    except FileNotFoundError:
        what = "missing"
    except pickle.UnpicklingError as error:
        code = describe_unsafe_pickle(error, path)
        if code is not None:  # the weights-only unpickler met a reference to Python code before running anything
            raise CheckpointError(f"{path} holds pickled Python code ({code}), not plain weights: it was not "
                                  f"loaded (nothing is unpickled); {fix}") from None
        what = "damaged: not a tensor file"
    except Exception as error:  # SafetensorError, EOFError, OSError, RuntimeError (a damaged zip), ...
        first = (str(error).strip().splitlines() or [""])[0][:160]
        what = f"damaged or truncated ({type(error).__name__}: {first})"
    raise CheckpointError(f"{path} is {what}; {fix}")


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restore every registered state from ``folder``; returns the checkpoint's meta dict.

    Raises:
        CheckpointError: A file of the checkpoint is damaged or is not a plain tensor file (it is
            never unpickled); the message names the file.
    """
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    for path in sorted(folder.glob("custom_checkpoint_*.pkl")):
        check_weights_file(path, "remove the checkpoint folder to resume from the one before it, or start a new run")
    random_states = folder / f"random_states_{accelerator.process_index}.pkl"
    try:
        accelerate_load(random_states, map_location="cpu")
    except Exception as error:
        warnings.warn(
            f"Random states in {random_states} cannot be restored ({type(error).__name__}: {error}); the resumed "
            "run continues with fresh random streams, so it will not repeat an uninterrupted run exactly.",
            RuntimeWarning, stacklevel=2,
        )
    try:
        accelerator.load_state(str(folder))
    except Exception as error:
        raise CheckpointError(
            f"Cannot load checkpoint {folder}: {type(error).__name__}: {error}. A file of it is damaged "
            "(truncated or corrupt): remove the folder to resume from the one before it, or start a new run."
        ) from error
    return meta


class RunCheckpoints:
    """A run's checkpoints: each saved with the experiment's facts, the latest loaded only into the same experiment.

    Args:
        accelerator: The run's accelerator (every process saves and loads its part).
        folder: ``<output_dir>/checkpoints``.
        config: The run's resolved config (saved with every checkpoint, compared on resume).
        fingerprint: Computes the dataset's :func:`~tpsnet_plugin.training.data.dataset_fingerprint`
            (it reads every image file's ends: done once, when a checkpoint is first saved or loaded).
    """

    def __init__(self, accelerator: Accelerator, folder: Path, config: Mapping[str, Any],
                 fingerprint: Callable[[], Mapping[str, Any]]) -> None:
        self.accelerator, self.folder, self.config = accelerator, Path(folder), config
        self._compute_fingerprint = fingerprint

    @functools.cached_property
    def fingerprint(self) -> Mapping[str, Any]:
        return self._compute_fingerprint()

    def save(self, tag: str, stage: str, epoch: int) -> Path:
        """Write a resumable checkpoint named ``tag`` (atomic)."""
        meta = {"stage": stage, "epoch": epoch, "config": self.config, "dataset": self.fingerprint}
        return save_checkpoint(self.accelerator, self.folder, tag, meta)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        return latest_checkpoint(self.folder)

    def load_latest(self, planned_synergy_epochs: int | None = None) -> Path:
        """Load the newest complete checkpoint after checking it is this experiment.

        Args:
            planned_synergy_epochs: The synergy epochs this run will train; a checkpoint past them
                is refused (None: not checked).

        Raises:
            FileNotFoundError: No complete checkpoint.
            ResumeMismatchError: The config (outside the safe list) or the dataset differs.
            ConfigError: The checkpoint is past the planned synergy epochs.
        """
        folder = latest_checkpoint(self.folder, log=self.accelerator.print)
        if folder is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint in {self.folder} (a run writes its first one after the "
                "warm-up). Start the run again with --overwrite, or without --resume in a new --output-dir."
            )
        meta = read_checkpoint_meta(folder)
        check_resume_compatible(meta, self.config, self.fingerprint)
        if (planned_synergy_epochs is not None and meta.get("stage") in ("synergy", "done")
                and int(meta.get("epoch", 0)) > planned_synergy_epochs):
            raise ConfigError(
                f"--resume: the checkpoint {folder.name} is at synergy epoch {meta['epoch']}, past the "
                f"{planned_synergy_epochs} epochs synergy.epochs={self.config['synergy']['epochs']} asks for: give "
                f"synergy.epochs >= {meta['epoch']} to train on, or use the run's exported model as it is")
        load_checkpoint(self.accelerator, folder)
        return folder
