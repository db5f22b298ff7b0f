"""The TPSNet training pipeline on Hugging Face Accelerate.

A thin composition of library parts (DESIGN sections 2 and 3):

- stage 0: optional instance-contrastive warm-up (``InstanceContrastiveLoss``), then embed, cluster
  per domain and align ids (``ClusterPseudoLabeler``);
- stage 1: frozen CLIP image features cached once, domain prompts learned with
  ``PromptContrastiveLoss`` (``DomainPromptLearner``), labels re-paired with the prompts;
- stage 2: ``TPSNet`` trained with ``PrototypeCrossEntropyLoss`` + ``ImageTextCrossEntropyLoss``
  (+ ``InstanceContrastiveLoss``, + a ``DomainPromptMiner``-fed pml ``NTXentLoss``), batches from
  ``PseudoLabelSampler``, re-clustering and evaluation every few epochs.

True labels are only read by the evaluator and the NMI/ARI diagnostics; the training dataset the
losses see carries no labels at all.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import broadcast, set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .. import _torchvision_compat  # noqa: F401
from ..backbones import PhasePriorBackbone
from ..data import DigitsDomain, DomainSubset, MultiDomainDataset, build_folder_domains
from ..evaluation import evaluate_domains, format_table, mean_metrics
from ..losses import (
    ImageTextCrossEntropyLoss,
    InstanceContrastiveLoss,
    PromptContrastiveLoss,
    PrototypeCrossEntropyLoss,
)
from ..models import TPSNet
from ..samplers import ClusterPseudoLabeler, PseudoLabelSampler
from ..text_prior import DomainPromptLearner
from ..utils import encode_domain_labels
from .augment import BatchAugment
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import default_config, merge_config
from .csv_tracker import CSVTracker

STAGES = ("warmup", "cluster", "prompts", "train", "done")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left untouched."""


class _StageModel(nn.Module):
    """One module for every stage, so Accelerate/DDP wraps the parameters once.

    ``synergy=False`` gives the backbone's fused feature I_f (stage 0, before prompts exist).
    """

    def __init__(self, tpsnet: TPSNet) -> None:
        super().__init__()
        self.tpsnet = tpsnet

    def forward(self, images: torch.Tensor, domains: torch.Tensor | None = None, synergy: bool = True):
        if synergy:
            return self.tpsnet(images, domains, return_dict=True)
        return {"embedding": F.normalize(self.tpsnet.backbone(images), dim=-1)}


def build_dataset(data_config: Mapping[str, Any], seed: int = 0) -> MultiDomainDataset:
    """Build the multi-domain dataset a config's ``data`` section describes."""
    domains = list(data_config["domains"])
    if len(domains) < 2:
        raise ValueError(f"UCDIR needs at least two domains, got {domains}. Pass e.g. --domains A B")
    size = int(data_config["image_size"])
    if data_config["dataset"] == "digits":
        dataset = MultiDomainDataset([DigitsDomain(d, image_size=size) for d in domains], domain_names=domains)
    elif data_config["dataset"] == "folder":
        if not data_config["root"]:
            raise ValueError("data.dataset=folder needs a root folder: pass --data-root DIR")
        dataset = build_folder_domains(
            data_config["root"],
            domains,
            layout=data_config["layout"],
            classes=data_config["classes"],
            class_policy=data_config["class_policy"],
            image_size=size,
            on_error=data_config["on_error"],
            list_files=data_config["list_files"],
        )
    else:
        raise ValueError(f"Unknown data.dataset {data_config['dataset']!r}: use 'digits' or 'folder'")
    if data_config["subset_per_domain"]:
        parts = [DomainSubset(part, int(data_config["subset_per_domain"]), seed=seed) for part in dataset.datasets]
        dataset = MultiDomainDataset(parts, domain_names=dataset.domain_names)
    return dataset


def build_model(config: Mapping[str, Any], embed_dim: int, num_domains: int, num_clusters: int) -> TPSNet:
    """Build the TPSNet of a config (text features start as zeros until stage 1 sets them)."""
    model_config = config["model"]
    backbone = PhasePriorBackbone(
        model_config["rgb_backbone"],
        phase_model=model_config["phase_backbone"] if model_config["phase_prior"] else None,
        embed_dim=embed_dim,
        pretrained=model_config["pretrained"],
        checkpoint_path=model_config["checkpoint_path"],
        phase_pretrained=model_config["phase_pretrained"],
        phase_amplitude=model_config["phase_amplitude"],
        num_heads=model_config["num_heads"],
        rgb_kwargs=dict(model_config["rgb_kwargs"]),
        phase_kwargs=dict(model_config["phase_kwargs"]),
        phase_stream=model_config["phase_stream"],
    )
    text_features = torch.zeros(num_domains, num_clusters, embed_dim) if model_config["text_prior"] else None
    return TPSNet(
        backbone,
        text_features,
        num_heads=model_config["num_heads"],
        weight_temperature=model_config["weight_temperature"],
    )


def _images_as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


class TPSNetTrainer:
    """Train and evaluate TPSNet from a config dict (see ``default_config.yaml`` for every option).

    Args:
        config: A full or partial config dict (merged over the defaults).
        accelerator: An ``Accelerator``; None builds one from the config's ``accelerate`` section.

    Example:
        >>> summary = TPSNetTrainer({"output_dir": "outputs/digits"}).fit()
    """

    def __init__(self, config: Mapping[str, Any] | None = None, accelerator: Accelerator | None = None) -> None:
        self.config = merge_config(default_config(), config or {})
        cfg = self.config
        self.output_dir = Path(cfg["output_dir"])
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = accelerator or self._build_accelerator()
        set_seed(int(cfg["seed"]))
        self.device = self.accelerator.device

        self.dataset = build_dataset(cfg["data"], seed=int(cfg["seed"]))
        self.domain_names = list(self.dataset.domain_names)
        self.num_domains = len(self.domain_names)
        self.num_clusters = int(cfg["data"]["num_clusters"] or len(self.dataset.classes))
        self.true_labels = np.asarray(self.dataset.labels, dtype=np.int64)
        self.domains = torch.as_tensor(np.asarray(self.dataset.domains), dtype=torch.long)
        self.images = self._cache_images() if cfg["data"]["cache_in_memory"] else None

        model_cfg = cfg["model"]
        self.prompt_learner = None
        embed_dim = int(model_cfg["embed_dim"])
        if model_cfg["text_prior"]:
            self.prompt_learner = DomainPromptLearner(
                model_cfg["clip_model"],
                pretrained=model_cfg["clip_pretrained"],
                num_domains=self.num_domains,
                num_clusters=self.num_clusters,
                num_context=model_cfg["num_context"],
                template=model_cfg["template"],
            ).to(self.device)
            embed_dim = self.prompt_learner.embed_dim
        self.embed_dim = embed_dim
        self.model = build_model(cfg, embed_dim, self.num_domains, self.num_clusters)
        self.memory_format = torch.channels_last if model_cfg["channels_last"] else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

        s2 = cfg["stage2"]
        backbone_params = [p for n, p in self.model.named_parameters() if n.startswith("backbone.") and _is_pretrained_part(n)]
        backbone_ids = {id(p) for p in backbone_params}
        head_params = [p for p in self.model.parameters() if id(p) not in backbone_ids]
        optimizer = torch.optim.Adam(
            [{"params": backbone_params, "lr": s2["lr_backbone"]}, {"params": head_params, "lr": s2["lr_head"]}],
            weight_decay=s2["weight_decay"],
        )
        self.stage_model, self.optimizer = self.accelerator.prepare(_StageModel(self.model), optimizer)

        self.augment = BatchAugment(**cfg["augment"])
        self.labeler = ClusterPseudoLabeler(
            self.num_clusters,
            niter=cfg["cluster"]["niter"],
            nredo=cfg["cluster"]["nredo"],
            seed=int(cfg["seed"]),
            center_per_domain=cfg["cluster"]["center_per_domain"],
            anchor=cfg["cluster"]["anchor"],
            warm_start=cfg["cluster"]["warm_start"],
            alignment=cfg["cluster"]["alignment"],
        )
        self.prototype_loss = PrototypeCrossEntropyLoss(
            self.num_clusters, embed_dim, temperature=s2["prototype_temperature"], momentum=s2["prototype_momentum"]
        ).to(self.device)
        self.instance_loss = InstanceContrastiveLoss(
            temperature=s2["instance_temperature"], within_domain=cfg["warmup"]["within_domain"]
        )
        self.image_text_loss = ImageTextCrossEntropyLoss(
            self.num_clusters,
            label_smoothing=s2["label_smoothing"],
            logit_scale=self.prompt_learner.logit_scale if self.prompt_learner is not None else 100.0,
        ).to(self.device)
        self.miner_loss = self._build_miner_loss() if s2["delta"] > 0 else None

        # Pseudo-label state (saved in checkpoints).
        self.labels: torch.Tensor | None = None  # aligned cluster id per image
        self.keep_mask: torch.Tensor | None = None
        self.stage = STAGES[0]
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_nmi: float | None = None
        self.final_embeddings: torch.Tensor | None = None
        self.start_time = time.time()
        self.elapsed_before_resume = 0.0

    # ------------------------------------------------------------------ setup helpers
    def _build_accelerator(self) -> Accelerator:
        acc = self.config["accelerate"]
        # Accelerate only starts a gloo (multi-CPU) process group when told to use the CPU; without
        # a GPU, `accelerate launch --multi_gpu --num_processes N` then trains on N CPU processes.
        # The process state must exist before a tracker is built (trackers query it).
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        PartialState(cpu=multi_cpu)
        log_with = acc["log_with"]
        if log_with == "auto":
            try:
                import tensorboard  # noqa: F401

                log_with = "tensorboard"
            except ImportError:
                log_with = "csv"
        if log_with not in ("tensorboard", "csv", "none"):
            raise ValueError(f"accelerate.log_with must be auto, tensorboard, csv or none, got {log_with!r}")
        tracker = {"tensorboard": "tensorboard", "none": None}[log_with] if log_with != "csv" else CSVTracker(
            "tpsnet", self.output_dir / "logs"
        )
        return Accelerator(
            cpu=multi_cpu,
            mixed_precision=acc["mixed_precision"],
            gradient_accumulation_steps=int(acc["gradient_accumulation_steps"]),
            log_with=tracker,
            project_dir=str(self.output_dir),
            # Stage 0 trains the backbone only; DDP must tolerate the unused synergy parameters.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    def _build_miner_loss(self):
        from pytorch_metric_learning.losses import NTXentLoss
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

        from ..miners import DomainPromptMiner

        s2 = self.config["stage2"]
        self.miner = DomainPromptMiner(self.num_clusters, threshold=s2["miner_threshold"])
        loss = NTXentLoss(temperature=s2["instance_temperature"])
        if self.accelerator.num_processes > 1:
            return DistributedLossWrapper(loss), DistributedMinerWrapper(self.miner)
        return loss, self.miner

    def _cache_images(self) -> torch.Tensor:
        """Decode every image once into a uint8 tensor (N×3×S×S)."""
        loader = DataLoader(self.dataset, batch_size=256, num_workers=int(self.config["data"]["num_workers"]))
        chunks = []
        for images, *_ in tqdm(loader, desc="caching images", disable=not self.accelerator.is_local_main_process):
            chunks.append(images.mul(255).round_().to(torch.uint8))
        return torch.cat(chunks)

    def _image_dataset(self):
        index = torch.arange(len(self.dataset))
        if self.images is not None:
            return TensorDataset(self.images, self.domains, index)
        return _NoLabelView(self.dataset)

    def _eval_loader(self) -> DataLoader:
        loader = DataLoader(
            self._image_dataset(),
            batch_size=int(self.config["eval"]["batch_size"]),
            shuffle=False,
            num_workers=int(self.config["data"]["num_workers"]),
        )
        return self.accelerator.prepare_data_loader(loader)

    # ------------------------------------------------------------------ embedding and evaluation
    @torch.no_grad()
    def embed(self, synergy: bool = True, encoder=None, desc: str = "embedding") -> torch.Tensor:
        """Embed every image (no augmentation); features are gathered once across processes, in dataset order.

        Args:
            synergy: Use the full TPSNet embedding (False: the backbone's fused feature I_f).
            encoder: Optional callable ``images -> features`` replacing the model (e.g. frozen CLIP).
            desc: Progress-bar label.

        Returns:
            An N×e float32 tensor on the CPU.
        """
        model = self.accelerator.unwrap_model(self.stage_model)
        self._sync_buffers(model)
        was_training = model.training
        model.eval()
        features, indices = [], []
        for images, domains, index in tqdm(
            self._eval_loader(), desc=desc, disable=not self.accelerator.is_local_main_process, leave=False
        ):
            images = _images_as_float(images).to(self.device, memory_format=self.memory_format)
            with self.accelerator.autocast():
                if encoder is not None:
                    out = encoder(images)
                else:
                    out = model(images, domains.to(self.device), synergy=synergy)["embedding"]
            out, index = self.accelerator.gather_for_metrics((out.float().contiguous(), index.to(self.device)))
            features.append(out.cpu())
            indices.append(index.cpu())
        model.train(was_training)
        features, indices = torch.cat(features), torch.cat(indices)
        if not torch.equal(indices, torch.arange(len(self.dataset))):
            raise RuntimeError("Gathered evaluation features are not one per image in dataset order")
        return features

    def _sync_buffers(self, model: nn.Module) -> None:
        # BatchNorm statistics drift apart across processes between DDP forwards; every process
        # must embed with rank 0's (the ones that get saved).
        if self.accelerator.num_processes > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def retrieval_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Apply the evaluation post-processing (optional per-domain centring, L2 normalisation)."""
        if self.config["eval"]["center_per_domain"]:
            embeddings = embeddings.clone()
            for d in range(self.num_domains):
                mask = self.domains == d
                embeddings[mask] -= embeddings[mask].mean(0)
        return F.normalize(embeddings, dim=-1)

    def evaluate(self, embeddings: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
        """Evaluate every ordered domain pair (queries: all of A, gallery: all of B) with true labels."""
        if embeddings is None:
            embeddings = self.embed(synergy=self.stage in ("train", "done"))
        return self._evaluate_features(self.retrieval_features(embeddings))

    def _evaluate_features(self, features: torch.Tensor) -> dict[str, dict[str, float]]:
        ev = self.config["eval"]
        return evaluate_domains(
            features,
            self.true_labels,
            self.domains.numpy(),
            domain_names=self.domain_names,
            ks=tuple(ev["ks"]),
            knn=ev["knn"],
            map_at_all=ev["map_at_all"],
        )

    def raw_pixel_baseline(self) -> dict[str, dict[str, float]] | None:
        """Raw-pixel cosine retrieval (grayscale pixels as features), the floor every model must beat."""
        if self.images is None:
            return None
        return self._evaluate_features(F.normalize(self.images.float().mean(1).flatten(1), dim=-1))

    # ------------------------------------------------------------------ pseudo-labels
    def cluster(self, embeddings: torch.Tensor) -> dict[str, Any]:
        """Cluster per domain, align ids, update labels, keep-mask and (when present) prototypes."""
        result = self.labeler.fit(embeddings.numpy(), self.domains.numpy(), true_labels=self.true_labels)
        labels = torch.as_tensor(result.labels, dtype=torch.long)
        # Every process clusters the same gathered features; rank 0's labels are authoritative.
        labels = broadcast(labels.to(self.device), from_process=0).cpu()
        self.labels = labels
        self.keep_mask = self._confident_mask(embeddings, labels)
        self.last_nmi = _as_float(getattr(result, "nmi", None))
        per_domain = getattr(result, "nmi_per_domain", None)
        info = {
            "ids_changed": result.ids_changed,
            "matching_cost": float(result.matching_cost),
            "nmi": self.last_nmi,
            "ari": _as_float(getattr(result, "ari", None)),
            "nmi_per_domain": dict(zip(self.domain_names, per_domain)) if per_domain is not None else None,
        }
        self.accelerator.print("clustering: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k != "nmi_per_domain"
        ))
        self.history.append({"stage": self.stage, "epoch": self.epoch, "clustering": info})
        if self.accelerator.is_main_process:
            self._write_jsonl()
        return info

    def _confident_mask(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ratio = float(self.config["cluster"]["keep_ratio"])
        mask = torch.ones(len(labels), dtype=torch.bool)
        if ratio >= 1:
            return mask
        features = F.normalize(embeddings, dim=-1)
        for d in range(self.num_domains):
            for c in range(self.num_clusters):
                members = torch.nonzero((labels == c) & (self.domains == d)).flatten()
                if len(members) == 0:
                    continue
                centroid = F.normalize(features[members].mean(0), dim=0)
                scores = features[members] @ centroid
                cut = max(1, math.ceil(ratio * len(members)))
                mask[members[scores.argsort(descending=True)[cut:]]] = False
        return mask

    def _init_prototypes(self, embeddings: torch.Tensor) -> None:
        centroids = torch.zeros(self.num_clusters, embeddings.shape[1])
        centroids.index_add_(0, self.labels, F.normalize(embeddings, dim=-1))
        self.prototype_loss.init_prototypes(F.normalize(centroids, dim=-1).to(self.device))

    # ------------------------------------------------------------------ stages
    def _check_finite(self, terms: Mapping[str, torch.Tensor], step: int) -> None:
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                latest = latest_checkpoint(self.checkpoint_dir)
                raise NonFiniteLossError(
                    f"Loss term '{name}' is {value.item()} in stage '{self.stage}', epoch {self.epoch}, step {step}. "
                    f"The last good checkpoint ({latest or 'none yet'}) is kept: lower the learning rates, "
                    "disable mixed precision, then run again with --resume."
                )

    def _warmup_loader(self, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1000 + self.epoch)
        loader = DataLoader(
            self._image_dataset(), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=int(self.config["data"]["num_workers"]), generator=generator,
        )
        return self.accelerator.prepare_data_loader(loader)

    def _views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = _images_as_float(images).to(self.device)
        return tuple(self.augment(images).contiguous(memory_format=self.memory_format) for _ in range(2))

    def _run_warmup(self) -> None:
        cfg = self.config["warmup"]
        for group in self.optimizer.param_groups:
            group["lr"] = cfg["lr"]
        loss_fn = InstanceContrastiveLoss(temperature=cfg["temperature"], within_domain=cfg["within_domain"])
        while self.epoch < int(cfg["epochs"]):
            loader = self._warmup_loader(int(cfg["batch_size"]))
            if len(loader) == 0:
                raise ValueError(
                    f"warmup.batch_size={cfg['batch_size']} leaves no full batch for {len(self.dataset)} images on "
                    f"{self.accelerator.num_processes} process(es): lower warmup.batch_size"
                )
            for step, (images, domains, _) in enumerate(self._progress(loader, f"warm-up {self.epoch + 1}")):
                with self.accelerator.accumulate(self.stage_model):
                    v1, v2 = self._views(images)
                    domains = domains.to(self.device)
                    with self.accelerator.autocast():
                        e1 = self.stage_model(v1, domains, synergy=False)["embedding"]
                        e2 = self.stage_model(v2, domains, synergy=False)["embedding"]
                    loss = loss_fn(e1.float(), domains, ref_emb=e2.float())
                    self._check_finite({"warmup_instance": loss}, step)
                    self.accelerator.backward(loss)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
            self.epoch += 1
            self.accelerator.log({"warmup/loss": loss.item()}, step=self.epoch)
        self._restore_learning_rates()

    def _restore_learning_rates(self) -> None:
        s2 = self.config["stage2"]
        self.optimizer.param_groups[0]["lr"] = s2["lr_backbone"]
        self.optimizer.param_groups[1]["lr"] = s2["lr_head"]

    def _run_prompts(self) -> None:
        """Stage 1: cache frozen CLIP image features, learn domain prompts, re-pair labels."""
        learner, cfg = self.prompt_learner, self.config["stage1"]
        clip_features = F.normalize(self.embed(encoder=learner.encode_images, desc="CLIP features"), dim=-1)
        clip_features = clip_features.to(self.device)
        domains = self.domains.to(self.device)
        labels = self.labels.to(self.device)
        loss_fn = PromptContrastiveLoss(logit_scale=learner.logit_scale)
        params = [p for p in learner.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg["lr"])
        generator = torch.Generator().manual_seed(int(self.config["seed"]))
        all_prompts = torch.arange(self.num_domains * self.num_clusters, device=self.device)
        batch_size = int(cfg["batch_size"])
        for epoch in self._progress(range(int(cfg["epochs"])), "stage 1 (prompts)"):
            combined = encode_domain_labels(domains, labels, self.num_clusters)
            order = torch.randperm(len(labels), generator=generator).to(self.device)
            for step, start in enumerate(range(0, len(order), batch_size)):
                batch = order[start:start + batch_size]
                text = learner().reshape(-1, self.embed_dim)
                loss = loss_fn(clip_features[batch], combined[batch], ref_emb=text, ref_labels=all_prompts)
                self._check_finite({"prompt_contrastive": loss}, step)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if cfg["repair_every"] and (epoch + 1) % int(cfg["repair_every"]) == 0:
                labels = self._repair(clip_features, labels)
        with torch.no_grad():
            text_features = F.normalize(learner().float(), dim=-1)
        # Stage 1 runs identically on every process; rank 0's result is authoritative.
        text_features = broadcast(text_features.contiguous(), from_process=0)
        self.labels = broadcast(labels, from_process=0).cpu()
        self.model.set_text_features(text_features)

    @torch.no_grad()
    def _repair(self, clip_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        learner, threshold = self.prompt_learner, float(self.config["stage1"]["repair_threshold"])
        text = F.normalize(learner().float(), dim=-1)[self.domains.to(labels.device)]  # N×C×e
        probs = (learner.logit_scale * torch.einsum("ne,nce->nc", clip_features, text)).softmax(-1)
        confidence, best = probs.max(-1)
        repaired = torch.where(confidence >= threshold, best, labels)
        self.accelerator.print(f"stage 1: re-paired {(repaired != labels).sum().item()} labels")
        return repaired

    def _run_train(self) -> None:
        cfg = self.config["stage2"]
        text_prior = self.prompt_learner is not None
        sampler = PseudoLabelSampler(
            self.labels.numpy(), self.domains.numpy(), batch_size=int(cfg["batch_size"]), m=int(cfg["m_per_cluster"]),
            seed=int(self.config["seed"]),
            num_replicas=self.accelerator.num_processes, rank=self.accelerator.process_index,
        )
        if text_prior:
            self.image_text_loss.set_text_features(self.model.text_features)
            if self.miner_loss is not None:
                self.miner.set_text_features(self.model.text_features)
        self.stage_model.train()
        self.prototype_loss.train()
        while self.epoch < int(cfg["epochs"]):
            sampler.set_labels(self.labels.numpy())
            sampler.set_epoch(self.epoch)
            totals: dict[str, float] = {}
            # The sampler shards by rank itself, so this loader does not go through accelerator.prepare.
            loader = DataLoader(self._image_dataset(), batch_sampler=sampler, num_workers=int(self.config["data"]["num_workers"]))
            for step, (images, domains, index) in enumerate(self._progress(loader, f"stage 2 epoch {self.epoch + 1}")):
                with self.accelerator.accumulate(self.stage_model):
                    terms = self._train_step(images, domains.to(self.device), index)
                    self._check_finite(terms, step)
                    loss = sum(self._weight(name) * value for name, value in terms.items())
                    self.accelerator.backward(loss)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value.item()
            self.epoch += 1
            self._sync_prototypes()
            self.accelerator.log({f"train/{k}": v / max(1, len(loader)) for k, v in totals.items()}, step=self.epoch)
            self._maybe_recluster_and_evaluate()
            if self.epoch % int(cfg["checkpoint_every"]) == 0 or self.epoch == int(cfg["epochs"]):
                self.save(f"train-epoch{self.epoch:03d}")

    def _weight(self, name: str) -> float:
        cfg = self.config["stage2"]
        return {"prototype_ce": cfg["alpha"], "image_text_ce": cfg["beta"], "instance": cfg["gamma"], "miner": cfg["delta"]}[name]

    def _train_step(self, images, domains, index) -> dict[str, torch.Tensor]:
        cfg = self.config["stage2"]
        v1, v2 = self._views(images)
        with self.accelerator.autocast():
            out1 = self.stage_model(v1, domains)
            out2 = self.stage_model(v2, domains)
        e1, e2 = out1["embedding"].float(), out2["embedding"].float()
        clusters = self.labels[index].to(self.device)
        keep = self.keep_mask[index].to(self.device).repeat(2)
        both = torch.cat([e1, e2])
        both_clusters = clusters.repeat(2)
        terms = {}
        if cfg["alpha"] > 0:
            terms["prototype_ce"] = self.prototype_loss(both[keep], both_clusters[keep])
        if self.prompt_learner is not None and cfg["beta"] > 0:
            combined = encode_domain_labels(domains.repeat(2), both_clusters, self.num_clusters)
            terms["image_text_ce"] = self.image_text_loss(both[keep], combined[keep])
        if cfg["gamma"] > 0:
            terms["instance"] = self.instance_loss(e1, domains, ref_emb=e2)
        if self.miner_loss is not None:
            loss_fn, miner = self.miner_loss
            combined = encode_domain_labels(domains, clusters, self.num_clusters)
            terms["miner"] = loss_fn(e1, combined, miner(e1, combined))
        return terms

    def _sync_prototypes(self) -> None:
        if self.accelerator.num_processes > 1:
            prototypes = self.accelerator.reduce(self.prototype_loss.prototypes.clone(), reduction="mean")
            self.prototype_loss.prototypes.copy_(F.normalize(prototypes, dim=-1))

    def _maybe_recluster_and_evaluate(self) -> None:
        cfg, cl, ev = self.config["stage2"], self.config["cluster"], self.config["eval"]
        last = self.epoch == int(cfg["epochs"])
        frozen = cl["freeze_after"] is not None and self.epoch >= int(cl["freeze_after"])
        recluster = bool(cl["recluster_every"]) and self.epoch % int(cl["recluster_every"]) == 0 and not frozen and not last
        evaluate = last or (ev["every"] and self.epoch % int(ev["every"]) == 0)
        if not (recluster or evaluate):
            return
        embeddings = self.embed()
        if recluster:
            self.cluster(embeddings)
            self._init_prototypes(embeddings)
        if evaluate:
            self._record(self.evaluate(embeddings))
        if last:
            self.final_embeddings = embeddings  # reused by the plots instead of embedding again

    def _record(self, results: dict[str, dict[str, float]]) -> None:
        self.history.append({"stage": self.stage, "epoch": self.epoch, "pseudo_label_nmi": self.last_nmi, "results": results})
        if self.accelerator.is_main_process:
            self._write_jsonl()
        mean = mean_metrics(results)
        self.accelerator.log({f"eval/{k}": v for k, v in mean.items()}, step=self.epoch)
        self.accelerator.print(f"[{self.stage} epoch {self.epoch}] " + ", ".join(f"{k}={v:.2f}" for k, v in mean.items()))

    def _write_jsonl(self) -> None:
        # Rewritten whole from the history (which resume restores), so a resumed run has no gaps or repeats.
        evaluations, clusterings = [], []
        for record in self.history:
            if "clustering" in record:
                clusterings.append(json.dumps({"stage": record["stage"], "epoch": record["epoch"], **record["clustering"]}))
                continue
            for direction, metrics in record["results"].items():
                evaluations.append(json.dumps({
                    "stage": record["stage"], "epoch": record["epoch"], "direction": direction,
                    "metrics": metrics, "pseudo_label_nmi": record["pseudo_label_nmi"],
                }))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for name, lines in (("metrics.jsonl", evaluations), ("clustering.jsonl", clusterings)):
            path = self.output_dir / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text("".join(line + "\n" for line in lines))
            tmp.replace(path)

    def _progress(self, iterable, desc: str):
        return tqdm(iterable, desc=desc, disable=not self.accelerator.is_local_main_process, leave=False)

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "stage": STAGES.index(self.stage),
            "epoch": self.epoch,
            "labels": self.labels,
            "keep_mask": self.keep_mask,
            "last_nmi": self.last_nmi,
            "elapsed": self.elapsed_before_resume + time.time() - self.start_time,
            "prototypes": self.prototype_loss.state_dict(),
            "labeler": {k: torch.as_tensor(v) for k, v in self.labeler.state_dict().items() if v is not None},
        }
        if self.prompt_learner is not None:
            state["prompts"] = {k: v for k, v in self.prompt_learner.state_dict().items() if "context" in k}
        return state

    def save(self, tag: str) -> Path:
        """Write a resumable checkpoint named ``tag`` (atomic)."""
        return save_checkpoint(self.accelerator, self.checkpoint_dir, tag, self._trainer_state(), self.history)

    def resume(self) -> bool:
        """Load the latest checkpoint of ``output_dir``; returns False when there is none."""
        folder = latest_checkpoint(self.checkpoint_dir)
        if folder is None:
            return False
        state, self.history = load_checkpoint(self.accelerator, folder)
        self.stage, self.epoch = STAGES[int(state["stage"])], int(state["epoch"])
        self.labels, self.keep_mask, self.last_nmi = state["labels"], state["keep_mask"], state["last_nmi"]
        self.elapsed_before_resume = float(state["elapsed"])
        self.prototype_loss.load_state_dict(state["prototypes"])
        labeler_state = {k: v.numpy() for k, v in state["labeler"].items()}
        if labeler_state:
            self.labeler.load_state_dict(labeler_state)
        if self.prompt_learner is not None and "prompts" in state:
            self.prompt_learner.load_state_dict(state["prompts"], strict=False)
        self.accelerator.print(f"resumed from {folder} (stage {self.stage}, epoch {self.epoch})")
        return True

    # ------------------------------------------------------------------ the whole run
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Run every stage (or the rest of them after ``resume``) and return the summary dict."""
        acc = self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        acc.wait_for_everyone()
        acc.init_trackers("tpsnet", config=_flatten(self.config))
        if resume and not self.resume():
            acc.print(f"--resume: no checkpoint in {self.checkpoint_dir}, starting from scratch")
        self.start_time = time.time()
        if self.stage == "warmup":
            self._run_warmup()
            self._advance("cluster")
        if self.stage == "cluster":
            embeddings = self.embed(synergy=False)
            self.cluster(embeddings)
            self._advance("prompts" if self.prompt_learner is not None else "train")
        if self.stage == "prompts":
            self._run_prompts()
            self._advance("train")
        if self.stage == "train":
            if self.epoch == 0:
                self._init_prototypes(self.embed())
            self._run_train()
            self.stage = "done"
        summary = self._summary()
        acc.end_training()
        return summary

    def _advance(self, stage: str) -> None:
        self.stage, self.epoch = stage, 0
        self.save(f"{stage}-start")

    def _summary(self) -> dict[str, Any]:
        evaluated = [r for r in self.history if r["stage"] == "train" and "results" in r]
        if not evaluated:
            raise RuntimeError("No evaluation was recorded; stage2.epochs must be >= 1")
        first_k = f"precision_at_{self.config['eval']['ks'][0]}"
        best = max(evaluated, key=lambda r: mean_metrics(r["results"])[first_k])
        baseline = self.raw_pixel_baseline() if self.config["data"]["dataset"] == "digits" else None
        summary = {
            "domains": self.domain_names,
            "last": evaluated[-1]["results"],
            "last_epoch": evaluated[-1]["epoch"],
            "oracle_best": {
                "note": f"epoch with the best mean {first_k} over directions; uses test labels (oracle)",
                "epoch": best["epoch"],
                **best["results"],
            },
            "pseudo_label_nmi": self.last_nmi,
            "clustering": [{"stage": r["stage"], "epoch": r["epoch"], **r["clustering"]}
                           for r in self.history if "clustering" in r],
            "raw_pixel_baseline": baseline,
            "wall_seconds": self.elapsed_before_resume + time.time() - self.start_time,
            "num_processes": self.accelerator.num_processes,
            "config": self.config,
        }
        if self.accelerator.is_main_process:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            self.accelerator.save_model(self.accelerator.unwrap_model(self.stage_model).tpsnet, self.output_dir / "model")
            (self.output_dir / "model" / "model_meta.json").write_text(json.dumps({
                "embed_dim": self.embed_dim, "num_domains": self.num_domains, "num_clusters": self.num_clusters,
                "domain_names": self.domain_names, "classes": list(self.dataset.classes),
            }))
            print(format_table(summary["last"], baseline=baseline))
            if self.config["eval"]["plots"]:
                from .plots import save_run_plots

                save_run_plots(self, self.final_embeddings if self.final_embeddings is not None else self.embed())
        return summary


class _NoLabelView(torch.utils.data.Dataset):
    """A MultiDomainDataset seen without its true labels: items are (image, domain, index)."""

    def __init__(self, dataset: MultiDomainDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, _, domain, index = self.dataset[index]
        return image, domain, index


def _is_pretrained_part(name: str) -> bool:
    # The timm networks get the backbone learning rate; projections and fusion are new heads.
    return name.startswith(("backbone.rgb_model.", "backbone.phase_model."))


def _as_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("overall", None)
    return None if value is None else float(value)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
