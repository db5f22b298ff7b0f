"""Atomic, resumable checkpoints around ``Accelerator.save_state``.

Everything resumable is registered with the accelerator (model, optimizer, RNG states, and with
``register_for_checkpointing`` the training state, prototypes, clusterer and prompts), so one
``save_state`` writes it all. Each checkpoint is written to a hidden temporary folder and renamed
into place only when complete, then a ``latest`` pointer file is replaced atomically: a run killed
at any moment leaves the previous checkpoint intact. Before ``load_state``, every registered-object
file is loaded once with ``weights_only=True``, so a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..utils.io import atomic_write_text

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
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / META).write_text(json.dumps(meta))
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


def latest_checkpoint(root: Path) -> Path | None:
    """Return the checkpoint folder ``root/latest`` names when it is complete, else None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / META).is_file() else None


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restore every registered state from ``folder``; returns the checkpoint's meta dict."""
    folder = Path(folder)
    for path in sorted(folder.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise RuntimeError(
                f"{path} is not a plain tensor checkpoint (refusing to unpickle it): {error}. "
                "Resume from a checkpoint this package wrote, or start a new run."
            ) from error
    accelerator.load_state(str(folder))
    return json.loads((folder / META).read_text())
