"""The training setup: accelerator, optimizer and the table of loss functions and miners.

Loss functions, miners and weights are dicts keyed by term name, as in pytorch-metric-learning's
trainers (``loss_funcs``, ``mining_funcs``, ``loss_weights``); a term with weight 0 is not built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from pytorch_metric_learning.losses import NTXentLoss
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from ..losses import ImageTextCrossEntropyLoss, InstanceContrastiveLoss, PrototypeCrossEntropyLoss
from ..miners import DomainPromptMiner
from .config import ConfigError
from .csv_tracker import CSVTracker

LOSS_TERMS = ("prototype", "image_text", "instance", "miner")


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


@dataclass
class LossTable:
    """The synergy stage's loss terms, keyed by name.

    Attributes:
        loss_funcs: Loss function per term name (``prototype``, ``image_text``, ``instance``, ``miner``).
        mining_funcs: Miner per term name (only ``miner``).
        loss_weights: Weight per term name; only terms with a weight above 0 are in ``loss_funcs``.
    """

    loss_funcs: dict[str, nn.Module] = field(default_factory=dict)
    mining_funcs: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of computed loss terms."""
        return sum(self.loss_weights[name] * value for name, value in terms.items())


def build_losses(
    synergy_config: Mapping[str, Any],
    num_clusters: int,
    embed_dim: int,
    text_prior: bool,
    logit_scale: float = 100.0,
    num_processes: int = 1,
) -> LossTable:
    """Build the loss table of the synergy stage from the ``synergy`` config section.

    Args:
        synergy_config: The ``synergy`` section (``loss_weights`` and the loss options).
        num_clusters: Number of clusters C.
        embed_dim: Embedding width e.
        text_prior: Whether prompts exist; without them ``image_text`` and ``miner`` are not built.
        logit_scale: CLIP's logit scale for the image-to-text logits.
        num_processes: World size; above 1 the pml loss and miner are wrapped to gather across processes.
    """
    cfg = synergy_config
    weights = {name: float(cfg["loss_weights"][name]) for name in LOSS_TERMS}
    if not text_prior:
        weights["image_text"] = 0.0
    table = LossTable(loss_weights={name: w for name, w in weights.items() if w > 0})
    if weights["prototype"] > 0:
        table.loss_funcs["prototype"] = PrototypeCrossEntropyLoss(
            num_clusters, embed_dim, temperature=cfg["prototype_temperature"], momentum=cfg["prototype_momentum"]
        )
    if weights["image_text"] > 0:
        table.loss_funcs["image_text"] = ImageTextCrossEntropyLoss(
            num_clusters, label_smoothing=cfg["label_smoothing"], logit_scale=logit_scale
        )
    if weights["instance"] > 0:
        table.loss_funcs["instance"] = InstanceContrastiveLoss(
            temperature=cfg["instance_temperature"], within_domain=cfg["instance_within_domain"]
        )
    if weights["miner"] > 0:
        loss, miner = NTXentLoss(temperature=cfg["instance_temperature"]), DomainPromptMiner(
            num_clusters, threshold=cfg["miner_threshold"]
        )
        if num_processes > 1:
            loss, miner = DistributedLossWrapper(loss), DistributedMinerWrapper(miner)
        table.loss_funcs["miner"], table.mining_funcs["miner"] = loss, miner
    return table
