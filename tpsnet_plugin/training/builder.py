"""From a config to the parts a run is made of: its data, its model and its training setup.

:class:`~tpsnet_plugin.training.TPSNetTrainer` builds them with these functions (in this order:
each draws from the seeded random streams) unless it is given them; a custom pipeline can build
one part and replace another.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from ..clustering import ClusterPseudoLabeler, faiss_gpu_available
from ..data import MultiDomainDataset
from ..errors import ConfigError
from ..models import TPSNet, create_tpsnet
from ..text_prior import DomainPromptLearner
from ..text_prior.domain_prompt_learner import clip_embed_dim, create_frozen_clip
from ..text_prior.image_tower import clip_config_image_size
from . import options
from .augment import BatchAugment
from .data import build_dataset, cache_images, class_names_of, fit_batch_to_dataset, small_domain_warnings
from .hooks import CheckpointHook, EndOfEpochHook, EvaluationHook, LoggingHook, ReclusterHook
from .loss_terms import LossTable, build_losses
from .setup import build_optimizer, phase_compile_mode
from .stages import ClusteringStage, PromptStage, Stage, SynergyStage, WarmupStage


@dataclass
class RunData:
    """The run's dataset and what is derived from it.

    Attributes:
        dataset: The multi-domain dataset.
        domains: Domain id per image (N, long).
        true_labels: Class per image (N); read only by the evaluation and diagnostics.
        num_clusters: C (``data.num_clusters``, else the number of classes).
        image_size: The resolved side of the images (``data.image_size`` may be ``auto``).
        images: Every image decoded once (N×3×S×S uint8) with ``data.cache_in_memory``, else None.
        warmup_batch_size / synergy_batch_size: The configured batch sizes fitted to the data.
        class_names: The names a CLIP reads for the zero-shot starting point, or None.
        warnings: What the data makes the config change or risk (also in ``summary.json``).
    """

    dataset: MultiDomainDataset
    domains: torch.Tensor
    true_labels: np.ndarray
    num_clusters: int
    image_size: int
    images: torch.Tensor | None
    warmup_batch_size: int
    synergy_batch_size: int
    class_names: list[str] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def domain_names(self) -> list[str]:
        return list(self.dataset.domain_names)


def build_data(config: Mapping[str, Any], num_processes: int = 1, show_progress: bool = True) -> RunData:
    """The dataset a config's ``data`` section describes, its batch sizes fitted, its images cached."""
    data_cfg, seed = config["data"], int(config["seed"])
    if data_cfg["image_size"] == "auto" and config["model"]["rgb_from_clip"]:
        # a backbone started from a CLIP tower sees the images at the size the tower was trained at
        data_cfg = {**data_cfg, "image_size": clip_config_image_size(config["model"]["clip_model"])}
    dataset = build_dataset(data_cfg, seed=seed)
    domains = torch.as_tensor(np.asarray(dataset.domains), dtype=torch.long)
    num_clusters = int(config["data"]["num_clusters"] or len(dataset.classes))
    # Data too small for the config: warned now and repeated in summary.json, never a silent degenerate run.
    domain_sizes = np.bincount(domains.numpy(), minlength=len(dataset.domain_names)).tolist()
    notes = small_domain_warnings(dict(zip(dataset.domain_names, domain_sizes)), num_clusters,
                                  int(config["synergy"]["m_per_cluster"]))
    warmup_batch_size = int(config["warmup"]["batch_size"])
    if config["warmup"]["epochs"]:
        warmup_batch_size, note = fit_batch_to_dataset(warmup_batch_size, len(dataset), num_processes)
        notes += [note] if note else []
    synergy_batch_size, note = fit_batch_to_dataset(
        int(config["synergy"]["batch_size"]), len(dataset), key="synergy.batch_size",
        multiple_of=int(config["synergy"]["m_per_cluster"]),
    )  # every process draws its batches from all images
    notes += [note] if note else []
    num_workers = int(config["data"]["num_workers"])
    return RunData(
        dataset=dataset,
        domains=domains,
        true_labels=np.asarray(dataset.labels, dtype=np.int64),
        num_clusters=num_clusters,
        image_size=dataset.image_size,
        images=cache_images(dataset, num_workers, show_progress) if config["data"]["cache_in_memory"] else None,
        warmup_batch_size=warmup_batch_size,
        synergy_batch_size=synergy_batch_size,
        class_names=class_names_of(config["data"], dataset.classes),
        warnings=notes,
    )


def zero_shot_enabled(config: Mapping[str, Any], class_names: list[str] | None) -> bool:
    """Whether the CLIP's zero-shot retrieval is one of the starting points (``eval.zero_shot``).

    Raises:
        ConfigError: ``eval.zero_shot: true`` without class names.
    """
    setting = config["eval"]["zero_shot"]
    if setting == "auto":
        return bool(config["model"]["clip_pretrained"]) and class_names is not None
    if setting and class_names is None:
        raise ConfigError(
            "eval.zero_shot=true needs class names, and the list files give only numeric labels: set "
            "data.class_names (one name per class, in label order) or data.classes, or eval.zero_shot=false")
    return bool(setting)


@dataclass
class RunModel:
    """The run's networks.

    Attributes:
        model: The TPSNet being trained.
        prompt_learner: The domain prompts on the frozen CLIP, with the text prior; else None.
        clip: The frozen open_clip model (text prior, backbone start, zero-shot starting point), or None.
        embed_dim: The embedding width e (the CLIP's when the prompts or its tower fix it).
        memory_format: The images' memory format (``model.channels_last``).
    """

    model: TPSNet
    prompt_learner: DomainPromptLearner | None
    clip: nn.Module | None
    embed_dim: int
    memory_format: torch.memory_format


def build_model(config: Mapping[str, Any], data: RunData, device: torch.device, zero_shot: bool) -> RunModel:
    """The TPSNet a config's ``model`` section describes, with its prompt learner or frozen CLIP."""
    model_cfg = config["model"]
    num_domains = len(data.domain_names)
    prompt_learner, clip, embed_dim = None, None, int(model_cfg["embed_dim"])
    if model_cfg["text_prior"]:
        prompt_learner = DomainPromptLearner(
            model_cfg["clip_model"], pretrained=model_cfg["clip_pretrained"], num_domains=num_domains,
            num_clusters=data.num_clusters, num_context=model_cfg["num_context"], template=model_cfg["template"],
        ).to(device)
        clip = prompt_learner.clip
    elif model_cfg["rgb_from_clip"] or zero_shot:
        clip = create_frozen_clip(model_cfg["clip_model"], model_cfg["clip_pretrained"]).to(device)
    if clip is not None and (model_cfg["text_prior"] or model_cfg["rgb_from_clip"]):
        embed_dim = clip_embed_dim(clip)  # the prompts and the CLIP projection fix e
        if int(model_cfg["embed_dim"]) not in (embed_dim, int(options.OPTIONS["model"]["embed_dim"].default)):
            warnings.warn(f"model.embed_dim={model_cfg['embed_dim']} is not used: with the text prior or "
                          f"model.rgb_from_clip the embedding width is the CLIP's, {embed_dim}", stacklevel=3)
    model = create_tpsnet(model_cfg, embed_dim, num_domains, data.num_clusters, image_size=data.image_size,
                          clip=clip)
    compile_mode = phase_compile_mode(model_cfg["compile"], device)
    if compile_mode is not None and model.backbone.phase_model is not None:
        model.backbone.compile_phase_branch(mode=compile_mode)
    memory_format = torch.channels_last if model_cfg["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    return RunModel(model, prompt_learner, clip, embed_dim, memory_format)


class StageModel(nn.Module):
    """The module the accelerator wraps: the full TPSNet, or (``synergy=False``) its backbone only.

    One wrapper for every stage, so DDP sees one module; the warm-up and the clustering use the
    backbone's fused feature, the synergy stage the full embedding.
    """

    def __init__(self, tpsnet: TPSNet) -> None:
        super().__init__()
        self.tpsnet = tpsnet

    def forward(self, images: torch.Tensor, domains: torch.Tensor | None = None, synergy: bool = True):
        if synergy:
            return self.tpsnet(images, domains, return_dict=True)
        return {"embedding": F.normalize(self.tpsnet.backbone(images), dim=-1)}


@dataclass
class RunSetup:
    """What trains the model: the wrapped model, its optimizer, the augmentations, the clusterer, the losses."""

    stage_model: nn.Module
    optimizer: torch.optim.Optimizer
    augment: BatchAugment
    labeler: ClusterPseudoLabeler
    losses: LossTable


def build_setup(config: Mapping[str, Any], accelerator: Accelerator, model: RunModel, num_clusters: int) -> RunSetup:
    """The training setup of a config, prepared by the accelerator (model, optimizer) and on its device."""
    stage_model, optimizer = accelerator.prepare(StageModel(model.model), build_optimizer(model.model,
                                                                                          config["synergy"]))
    augment = BatchAugment(**config["augment"])
    cl, device = config["cluster"], accelerator.device
    labeler = ClusterPseudoLabeler(
        num_clusters, kmeans=cl["kmeans"], niter=cl["niter"], nredo=cl["nredo"], seed=int(config["seed"]),
        center_per_domain=cl["center_per_domain"], anchor=cl["anchor"], warm_start=cl["warm_start"],
        alignment=cl["alignment"],
        # faiss on the GPU when the run has one (k-means of DomainNet-size features in seconds)
        use_gpu=device.type == "cuda" and cl["kmeans"] != "sklearn" and faiss_gpu_available(),
    )
    learner = model.prompt_learner
    losses = build_losses(
        config["synergy"], num_clusters, model.embed_dim,
        prompt_features=model.model.prompt_features if learner is not None else None,
        logit_scale=learner.logit_scale if learner is not None else 100.0, num_processes=accelerator.num_processes,
    )
    for loss in losses.loss_funcs.values():
        loss.to(device)
    return RunSetup(stage_model, optimizer, augment, labeler, losses)


def build_hooks(config: Mapping[str, Any]) -> list[EndOfEpochHook]:
    """The synergy stage's end-of-epoch hooks a config asks for: log, re-cluster, evaluate, checkpoint."""
    return [
        LoggingHook(every=1),
        ReclusterHook(every=config["cluster"]["recluster_every"]),
        EvaluationHook(every=config["eval"]["every"]),
        CheckpointHook(every=config["synergy"]["checkpoint_every"]),
    ]


def build_stages(config: Mapping[str, Any], data: RunData, with_prompts: bool,
                 hooks: Sequence[EndOfEpochHook] | None = None) -> list[Stage]:
    """The stages a config runs, in order, each from its own section (batch sizes fitted to the data).

    Args:
        config: The resolved config.
        data: The run's data (its fitted batch sizes).
        with_prompts: Include the prompts stage (the text prior is on).
        hooks: The synergy stage's hooks; None = :func:`build_hooks`.
    """
    stages: list[Stage] = [WarmupStage.from_config({**config["warmup"], "batch_size": data.warmup_batch_size}),
                           ClusteringStage()]
    if with_prompts:
        stages.append(PromptStage.from_config(config["prompts"]))
    stages.append(SynergyStage.from_config({**config["synergy"], "batch_size": data.synergy_batch_size},
                                           hooks=build_hooks(config) if hooks is None else hooks))
    return stages
