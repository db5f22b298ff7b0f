"""The training setup: the accelerator and the optimizer (the loss terms are in ``loss_terms``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from torch import nn

from .config import ConfigError
from .csv_tracker import CSVTracker


def build_accelerator(accelerate_config: Mapping[str, Any], output_dir: str | Path) -> Accelerator:
    """Build the run's ``Accelerator`` from the config's ``accelerate`` section.

    Without a GPU, ``accelerate launch --multi_gpu --num_processes N`` trains on N CPU processes
    (gloo): Accelerate starts that process group only when told to use the CPU.
    """
    precision = accelerate_config["mixed_precision"]
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("accelerate.mixed_precision=fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("accelerate.mixed_precision=bf16 is not supported by this GPU; use fp16 or no")
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    PartialState(cpu=multi_cpu)  # trackers query the process state, so it must exist first
    log_with = accelerate_config["log_with"]
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = "csv"
    if log_with not in ("tensorboard", "csv", "none"):
        raise ValueError(f"accelerate.log_with must be auto, tensorboard, csv or none, got {log_with!r}")
    tracker = {"tensorboard": "tensorboard", "none": None}[log_with] if log_with != "csv" else CSVTracker(
        "tpsnet", Path(output_dir) / "logs"
    )
    return Accelerator(
        cpu=multi_cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=int(accelerate_config["gradient_accumulation_steps"]),
        log_with=tracker,
        project_dir=str(output_dir),
        # The warm-up trains the backbone only; DDP must tolerate the unused synergy parameters.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def phase_compile_mode(option: str, device: torch.device) -> str | None:
    """The ``torch.compile`` mode for the phase branch that ``model.compile`` asks for, or None (eager).

    ``auto`` compiles on CUDA only: there the phase network is launch-bound and fusing its kernels
    saves host time; on a CPU the kernels are compute-bound, and compiling costs start-up time for
    nothing. Mode ``default`` (no CUDA graphs) is the ``auto`` choice because it is safe with
    variable batch sizes and two forward passes per step; ``reduce-overhead`` adds CUDA graphs.
    """
    if option == "off" or (option == "auto" and device.type != "cuda"):
        return None
    return "default" if option == "auto" else option


def build_optimizer(model: nn.Module, synergy_config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam with two parameter groups: the timm networks (``lr_backbone``) and the new heads (``lr_head``)."""
    backbone = [p for name, p in model.named_parameters() if _is_pretrained_part(name)]
    backbone_ids = {id(p) for p in backbone}
    heads = [p for p in model.parameters() if id(p) not in backbone_ids]
    return torch.optim.Adam(
        [
            {"params": backbone, "lr": synergy_config["lr_backbone"], "name": "backbone"},
            {"params": heads, "lr": synergy_config["lr_head"], "name": "heads"},
        ],
        weight_decay=synergy_config["weight_decay"],
    )


def _is_pretrained_part(name: str) -> bool:
    # The timm networks get the backbone learning rate; projections, fusion and synergy are new heads.
    return ".rgb_model." in f".{name}" or ".phase_model." in f".{name}"


class LearningRates:
    """``rates(lr)`` sets every parameter group to ``lr``; ``rates()`` restores the ``synergy`` section's rates.

    Args:
        optimizer: The optimizer of :func:`build_optimizer` (groups named ``backbone`` and ``heads``).
        synergy_config: The ``synergy`` section (``lr_backbone``, ``lr_head``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, synergy_config: Mapping[str, Any]) -> None:
        self.optimizer, self.synergy_config = optimizer, synergy_config

    def __call__(self, lr: float | None = None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr if lr is not None else self.synergy_config[
                "lr_backbone" if group["name"] == "backbone" else "lr_head"]
