"""Atomic, resumable checkpoints around ``Accelerator.save_state``.

Each checkpoint is written to a hidden temporary folder and renamed into place only when complete,
then a ``latest`` pointer file is replaced atomically, so a run killed at any moment leaves the
previous checkpoint intact. Loading uses ``weights_only=True`` (safetensors for the model), so a
checkpoint folder never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

TRAINER_STATE = "trainer_state.pt"
HISTORY = "history.json"
LATEST = "latest"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    tag: str,
    trainer_state: dict[str, Any],
    history: list[dict[str, Any]],
    keep: int = 2,
) -> Path:
    """Save model, optimizer and RNG states (Accelerate) plus the trainer's own state under ``root/tag``.

    Args:
        accelerator: The run's accelerator; every process must call this.
        root: Folder holding all checkpoints of a run.
        tag: Checkpoint name, e.g. ``"stage2-epoch003"``.
        trainer_state: Tensors and plain Python values only (loaded back with ``weights_only=True``).
        history: The metrics records so far (JSON-serialisable).
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
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / HISTORY).write_text(json.dumps(history))
        if final.exists():
            old = root / f".old-{tag}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _write_atomic(root / LATEST, tag)
        ordered = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for stale in ordered[:-keep]:
            if stale != final:
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """Return the newest complete checkpoint folder under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / TRAINER_STATE).is_file() else None


def load_checkpoint(accelerator: Accelerator, folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Restore Accelerate's states from ``folder``; return ``(trainer_state, history)``."""
    accelerator.load_state(str(folder))
    trainer_state = torch.load(Path(folder) / TRAINER_STATE, map_location="cpu", weights_only=True)
    history = json.loads((Path(folder) / HISTORY).read_text())
    return trainer_state, history
