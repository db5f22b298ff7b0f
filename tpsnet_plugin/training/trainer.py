"""The TPSNet trainer: a composition of a model, a training setup, stages and hooks.

``fit`` runs the stages in order (warm-up, clustering, prompts, synergy), checkpointing between
them; the synergy stage runs its end-of-epoch hooks (log, re-cluster, evaluate, checkpoint).
True labels are only read by the evaluation and the pseudo-label diagnostics: the dataset the
losses see carries no labels at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from torch import nn
from torch.utils.data import DataLoader

from ..clustering import ClusterPseudoLabeler, cluster_centroids, confident_mask, faiss_gpu_available
from ..errors import TPSNetError
from ..evaluation import evaluate_domains, mean_metrics, relabel_precision
from ..evaluation.baseline import raw_pixel_features
from ..models import TPSNet, create_tpsnet
from ..models.pretrained import pretrained_config
from ..text_prior import DomainPromptLearner
from ..text_prior.domain_prompt_learner import clip_embed_dim, create_frozen_clip, encode_clip_images
from ..text_prior.image_tower import clip_config_image_size
from ..text_prior.zero_shot import zero_shot_probabilities
from ..utils.io import atomic_write_text
from .augment import BatchAugment
from .checkpoint import (
    check_resume_compatible,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from .config import ConfigError, default_config, flatten_config, merge_config, validate_config
from .data import (
    build_dataset,
    cache_images,
    class_names_of,
    dataset_fingerprint,
    fit_batch_to_dataset,
    images_as_float,
    small_domain_warnings,
    unlabelled_view,
)
from .hooks import CheckpointHook, EndOfEpochHook, EvaluationHook, LoggingHook, ReclusterHook
from .loss_terms import build_losses
from .progress import progress
from .reporting import build_summary, export_model, write_records, write_summary
from .run_dir import (
    OutputDirLock,
    TrainingInterrupted,
    check_output_dir,
    check_output_dir_outside,
    remove_run_artifacts,
    stop_requested,
    write_run_marker,
)
from .setup import build_accelerator, build_optimizer, phase_compile_mode
from .stages import ClusteringStage, PromptStage, Stage, SynergyStage, WarmupStage
from .state import PromptContext, TrainingState


class NonFiniteLossError(TPSNetError, RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left untouched."""


# The learning-rate options of each stage, named when its loss turns NaN.
LEARNING_RATE_KEYS = {"warmup": ("warmup.lr",), "prompts": ("prompts.lr",)}


class StageModel(nn.Module):
    """One module for every stage, so Accelerate/DDP wraps the parameters once.

    ``synergy=False`` gives the backbone's fused feature I_f (before prompts exist).
    """

    def __init__(self, tpsnet: TPSNet) -> None:
        super().__init__()
        self.tpsnet = tpsnet

    def forward(self, images: torch.Tensor, domains: torch.Tensor | None = None, synergy: bool = True):
        if synergy:
            return self.tpsnet(images, domains, return_dict=True)
        return {"embedding": F.normalize(self.tpsnet.backbone(images), dim=-1)}


class TPSNetTrainer:
    """Train and evaluate TPSNet from a config dict (see ``default_config.yaml`` for every option).

    Args:
        config: A full or partial config dict (merged over the defaults).
        accelerator: An ``Accelerator``; None builds one from the config's ``accelerate`` section.
        stages: The stages ``fit`` runs, in order (each a :class:`Stage` with a distinct ``name``);
            None builds the config's: warm-up, clustering, prompts (with the text prior), synergy.
        hooks: The end-of-epoch hooks of the default synergy stage; None builds the config's
            (logging, re-clustering, evaluation, checkpoints). Ignored when ``stages`` is given.

    Example:
        >>> summary = TPSNetTrainer({"output_dir": "outputs/digits"}).fit()
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        accelerator: Accelerator | None = None,
        stages: Sequence[Stage] | None = None,
        hooks: Sequence[EndOfEpochHook] | None = None,
    ) -> None:
        self.config = cfg = merge_config(default_config(), config or {})
        validate_config(cfg)
        self.output_dir = Path(cfg["output_dir"])
        if cfg["data"]["dataset"] == "folder" and cfg["data"]["root"]:
            check_output_dir_outside(self.output_dir, cfg["data"]["root"])
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = accelerator or build_accelerator(cfg["accelerate"], self.output_dir)
        self.device = self.accelerator.device
        set_seed(int(cfg["seed"]))

        # Data
        data_cfg = cfg["data"]
        if data_cfg["image_size"] == "auto" and cfg["model"]["rgb_from_clip"]:
            # a backbone started from a CLIP tower sees the images at the size the tower was trained at
            data_cfg = {**data_cfg, "image_size": clip_config_image_size(cfg["model"]["clip_model"])}
        self.dataset = build_dataset(data_cfg, seed=int(cfg["seed"]))
        self.domain_names = list(self.dataset.domain_names)
        self.num_domains = len(self.domain_names)
        self.num_clusters = int(cfg["data"]["num_clusters"] or len(self.dataset.classes))
        self.num_workers = int(cfg["data"]["num_workers"])
        self.true_labels = np.asarray(self.dataset.labels, dtype=np.int64)
        self.domains = torch.as_tensor(np.asarray(self.dataset.domains), dtype=torch.long)
        self.image_size = int(self.dataset[0][0].shape[-1])  # resolved (data.image_size may be "auto")
        # Data too small for the config: warned now and repeated in summary.json, never a silent degenerate run.
        domain_sizes = np.bincount(self.domains.numpy(), minlength=self.num_domains).tolist()
        self.setup_warnings = small_domain_warnings(
            dict(zip(self.domain_names, domain_sizes)), self.num_clusters, int(cfg["synergy"]["m_per_cluster"])
        )
        self.warmup_batch_size = int(cfg["warmup"]["batch_size"])
        if cfg["warmup"]["epochs"]:
            self.warmup_batch_size, note = fit_batch_to_dataset(
                self.warmup_batch_size, len(self.dataset), self.accelerator.num_processes
            )
            self.setup_warnings += [note] if note else []
        self.synergy_batch_size, note = fit_batch_to_dataset(
            int(cfg["synergy"]["batch_size"]), len(self.dataset), key="synergy.batch_size",
            multiple_of=int(cfg["synergy"]["m_per_cluster"]),
        )  # every process draws its batches from all images
        self.setup_warnings += [note] if note else []
        self.images = (
            cache_images(self.dataset, self.num_workers, show_progress=self.accelerator.is_local_main_process)
            if cfg["data"]["cache_in_memory"] else None
        )

        # Model
        model_cfg = cfg["model"]
        self.class_names = class_names_of(cfg["data"], self.dataset.classes)
        self.zero_shot = self.zero_shot_enabled()  # checked now: a refused setting fails before any work
        self.prompt_learner = None
        self.clip = None  # the frozen open_clip model: text prior, backbone start, zero-shot starting point
        self.embed_dim = int(model_cfg["embed_dim"])
        if model_cfg["text_prior"]:
            self.prompt_learner = DomainPromptLearner(
                model_cfg["clip_model"],
                pretrained=model_cfg["clip_pretrained"],
                num_domains=self.num_domains,
                num_clusters=self.num_clusters,
                num_context=model_cfg["num_context"],
                template=model_cfg["template"],
            ).to(self.device)
            self.clip = self.prompt_learner.clip
        elif model_cfg["rgb_from_clip"] or self.zero_shot:
            self.clip = create_frozen_clip(model_cfg["clip_model"], model_cfg["clip_pretrained"]).to(self.device)
        if self.clip is not None and (model_cfg["text_prior"] or model_cfg["rgb_from_clip"]):
            self.embed_dim = clip_embed_dim(self.clip)  # the prompts and the CLIP projection fix e
        self.model = create_tpsnet(model_cfg, self.embed_dim, self.num_domains, self.num_clusters,
                                   image_size=self.image_size, clip=self.clip)
        compile_mode = phase_compile_mode(model_cfg["compile"], self.device)
        if compile_mode is not None and self.model.backbone.phase_model is not None:
            self.model.backbone.compile_phase_branch(mode=compile_mode)
        self.memory_format = torch.channels_last if model_cfg["channels_last"] else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

        # Training setup
        self.stage_model, self.optimizer = self.accelerator.prepare(
            StageModel(self.model), build_optimizer(self.model, cfg["synergy"])
        )
        self.augment = BatchAugment(**cfg["augment"])
        cl = cfg["cluster"]
        self.labeler = ClusterPseudoLabeler(
            self.num_clusters, kmeans=cl["kmeans"], niter=cl["niter"], nredo=cl["nredo"], seed=int(cfg["seed"]),
            center_per_domain=cl["center_per_domain"], anchor=cl["anchor"], warm_start=cl["warm_start"],
            alignment=cl["alignment"],
            # faiss on the GPU when the run has one (k-means of DomainNet-size features in seconds)
            use_gpu=self.device.type == "cuda" and cl["kmeans"] != "sklearn" and faiss_gpu_available(),
        )
        self.losses = build_losses(
            cfg["synergy"], self.num_clusters, self.embed_dim, text_prior=self.prompt_learner is not None,
            logit_scale=self.prompt_learner.logit_scale if self.prompt_learner is not None else 100.0,
            num_processes=self.accelerator.num_processes,
        )
        for loss in self.losses.loss_funcs.values():
            loss.to(self.device)
        self.stages = list(stages) if stages is not None else self.build_stages(hooks)
        self.state = TrainingState([stage.name for stage in self.stages])
        # Everything resumable goes through Accelerate's save_state/load_state (fixed order).
        self.accelerator.register_for_checkpointing(self.state, self.labeler)
        if "prototype" in self.losses.loss_funcs:
            self.accelerator.register_for_checkpointing(self.losses.loss_funcs["prototype"])
        if self.prompt_learner is not None:
            self.accelerator.register_for_checkpointing(PromptContext(self.prompt_learner))

        for warning in self.setup_warnings:
            warnings.warn(warning, stacklevel=2)
        self._fingerprint = dataset_fingerprint(self.dataset)
        self._epoch_embeddings: tuple[tuple[str, int], torch.Tensor] | None = None

    def build_hooks(self) -> list[EndOfEpochHook]:
        """The synergy stage's end-of-epoch hooks, from the config."""
        cfg = self.config
        return [
            LoggingHook(every=1),
            ReclusterHook(every=cfg["cluster"]["recluster_every"]),
            EvaluationHook(every=cfg["eval"]["every"]),
            CheckpointHook(every=cfg["synergy"]["checkpoint_every"]),
        ]

    def build_stages(self, hooks: Sequence[EndOfEpochHook] | None = None) -> list[Stage]:
        """The stages ``fit`` runs, in order, from the config (batch sizes fitted to the data)."""
        cfg = self.config
        stages: list[Stage] = [WarmupStage.from_config({**cfg["warmup"], "batch_size": self.warmup_batch_size}),
                               ClusteringStage()]
        if self.prompt_learner is not None:
            stages.append(PromptStage.from_config(cfg["prompts"]))
        stages.append(SynergyStage.from_config({**cfg["synergy"], "batch_size": self.synergy_batch_size},
                                               hooks=self.build_hooks() if hooks is None else hooks))
        return stages

    # ------------------------------------------------------------------ the whole run
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Run every stage (or the rest of them after ``resume``) and return the summary dict.

        Args:
            resume: Continue the run in ``output_dir`` from its latest complete checkpoint.
            overwrite: Replace a previous run in ``output_dir`` (its checkpoints, metrics, model).

        Raises:
            OutputDirError: ``output_dir`` holds a previous run and neither flag is set, or another
                process is writing to it.
        """
        acc = self.accelerator
        check_output_dir(self.output_dir, resume=resume, overwrite=overwrite)  # before the lock creates the folder
        lock = OutputDirLock(self.output_dir).acquire() if acc.is_main_process else None
        try:
            check_output_dir(self.output_dir, resume=resume, overwrite=overwrite)  # again, now that no one else writes
            if resume:
                self.resume()  # before anything is written: a refused resume leaves the run as it was
            acc.wait_for_everyone()
            if acc.is_main_process:
                if overwrite:
                    remove_run_artifacts(self.output_dir)
                self.output_dir.mkdir(parents=True, exist_ok=True)
                write_run_marker(self.output_dir)
                atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
            acc.wait_for_everyone()
            acc.init_trackers("tpsnet", config={  # trackers take scalars only
                key: value if isinstance(value, (int, float, str, bool)) else str(value)
                for key, value in flatten_config(self.config, sep="/").items()
            })
            return self._run_stages()
        except KeyboardInterrupt as stop:
            raise TrainingInterrupted(self.stop_message(str(stop) or "interrupted")) from None
        except RuntimeError:
            if stop_requested():  # a DataLoader worker killed by the same signal
                raise TrainingInterrupted(self.stop_message(stop_requested())) from None
            raise
        finally:
            if lock is not None:
                lock.release()

    def stop_message(self, reason: str) -> str:
        """What a stopped run tells its user: what is kept and the command that continues (or restarts) it."""
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return (f"{reason} before the first checkpoint (written after the warm-up): nothing can be resumed; "
                    f"start again with --overwrite --output-dir {self.output_dir}")
        return (f"{reason}; the last complete checkpoint ({latest.name}) is kept: continue with --resume "
                f"--output-dir {self.output_dir}")

    def _run_stages(self) -> dict[str, Any]:
        acc = self.accelerator
        self.state.restart_clock()
        if not any("baseline" in record for record in self.state.history):
            self.record_baseline()
        names = [stage.name for stage in self.stages] + ["done"]
        for position, stage in enumerate(self.stages):
            order = self.state.stage_names
            if order.index(self.state.stage) > order.index(stage.name):
                continue
            stage.run(self)
            if names[position + 1] == "done":
                self.state.stage = "done"  # the epoch stays: the final embeddings are those of the last epoch
            else:
                self.state.stage, self.state.epoch = names[position + 1], 0
                self.save(f"{self.state.stage}-start")
        summary = self.finish()
        acc.end_training()
        return summary

    def finish(self) -> dict[str, Any]:
        """Build and write the summary, export the model and draw the plots."""
        summary = build_summary(
            self.state.history,
            first_k=int(self.config["eval"]["ks"][0]),
            domain_names=self.domain_names,
            setup_warnings=self.setup_warnings,
            wall_seconds=self.state.elapsed,
            num_processes=self.accelerator.num_processes,
            config=self.config,
        )
        for warning in summary["warnings"]:
            self.accelerator.print(f"WARNING: {warning}")
        if self.accelerator.is_main_process:
            tpsnet = self.accelerator.unwrap_model(self.stage_model).tpsnet
            export_model(self.accelerator, tpsnet, self.output_dir, pretrained_config(
                self.config["model"], tpsnet, embed_dim=self.embed_dim, num_domains=self.num_domains,
                num_clusters=self.num_clusters, image_size=self.image_size, domain_names=self.domain_names,
                classes=list(self.dataset.classes),
            ))
            write_summary(self.output_dir, summary)
            if self.config["eval"]["plots"]:
                from .plots import save_run_plots

                save_run_plots(self, self.epoch_embeddings())
        return summary

    # ------------------------------------------------------------------ data
    def train_dataset(self):
        """The dataset as training sees it: ``(image, domain, index)`` items, no true labels."""
        return unlabelled_view(self.dataset, self.images, self.domains)

    def shuffled_loader(self, batch_size: int, seed: int) -> DataLoader:
        """A shuffled, sharded loader of full batches (warm-up)."""
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1000 + seed)
        loader = DataLoader(
            self.train_dataset(), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=self.num_workers, generator=generator,
        )
        return self.accelerator.prepare_data_loader(loader)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of a batch, on the model's device."""
        images = images_as_float(images).to(self.device)
        return tuple(self.augment(images).contiguous(memory_format=self.memory_format) for _ in range(2))

    def progress(self, iterable, desc: str):
        """A progress bar on a terminal, one line per loop in a log; main process only."""
        return progress(iterable, desc, enabled=self.accelerator.is_local_main_process)

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
        acc = self.accelerator
        model = acc.unwrap_model(self.stage_model)
        self._sync_buffers(model)
        was_training = model.training
        model.eval()
        loader = acc.prepare_data_loader(DataLoader(
            self.train_dataset(), batch_size=int(self.config["eval"]["batch_size"]), shuffle=False,
            num_workers=self.num_workers,
        ))
        features, indices = [], []
        for images, domains, index in self.progress(loader, desc):
            images = images_as_float(images).to(self.device, memory_format=self.memory_format)
            with acc.autocast():
                if encoder is not None:
                    out = encoder(images)
                else:
                    out = model(images, domains.to(self.device), synergy=synergy)["embedding"]
            out, index = acc.gather_for_metrics((out.float().contiguous(), index.to(self.device)))
            features.append(out.cpu())
            indices.append(index.cpu())
        model.train(was_training)
        features, indices = torch.cat(features), torch.cat(indices)
        if not torch.equal(indices, torch.arange(len(self.dataset))):
            raise RuntimeError("Gathered evaluation features are not one per image in dataset order")
        return features

    def epoch_embeddings(self) -> torch.Tensor:
        """The retrieval embedding of every image at the current stage and epoch, computed once."""
        stage = "synergy" if self.state.stage == "done" else self.state.stage
        key = (stage, self.state.epoch)
        if self._epoch_embeddings is None or self._epoch_embeddings[0] != key:
            self._epoch_embeddings = (key, self.embed(synergy=stage == "synergy"))
        return self._epoch_embeddings[1]

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
            embeddings = self.epoch_embeddings()
        return self.evaluate_features(self.retrieval_features(embeddings))

    def evaluate_features(self, features: torch.Tensor) -> dict[str, dict[str, float]]:
        """Evaluate given retrieval features (one row per image, dataset order) with the config's metrics."""
        ev = self.config["eval"]
        # On the run's device: a GPU ranks a DomainNet-size gallery in seconds, a CPU in hours.
        return evaluate_domains(
            features.to(self.device), self.true_labels, self.domains.numpy(), domain_names=self.domain_names,
            ks=tuple(ev["ks"]), knn=ev["knn"], map_at_all=ev["map_at_all"],
            batch_size=int(ev["batch_size"]),
        )

    def starts_pretrained(self) -> bool:
        """Whether the RGB backbone starts from pretrained weights (timm ``pretrained``, a file, a CLIP tower)."""
        model_cfg = self.config["model"]
        return bool(model_cfg["pretrained"] or model_cfg["checkpoint_path"] or model_cfg["rgb_from_clip"])

    def zero_shot_enabled(self) -> bool:
        """Whether the CLIP's zero-shot retrieval is one of the starting points (``eval.zero_shot``)."""
        setting = self.config["eval"]["zero_shot"]
        if setting == "auto":
            return bool(self.config["model"]["clip_pretrained"]) and self.class_names is not None
        if setting and self.class_names is None:
            raise ConfigError(
                "eval.zero_shot=true needs class names, and the list files give only numeric labels: set "
                "data.class_names (one name per class, in label order) or data.classes, or eval.zero_shot=false")
        return bool(setting)

    def starting_point_kinds(self) -> list[str]:
        """The starting points this run reports: raw pixels, the frozen pretrained features, the CLIP zero-shot."""
        kinds = ["raw_pixels"]
        if self.starts_pretrained():
            kinds.append("frozen_features")
        if self.zero_shot:
            kinds.append("clip_zero_shot")
        return kinds

    def baseline(self, kind: str = "raw_pixels") -> dict[str, Any]:
        """Retrieval with one of the run's starting points, evaluated exactly like the trained embedding.

        Every starting point goes through the same retrieval post-processing as the model
        (:meth:`retrieval_features`: per-domain centring when ``eval.center_per_domain``, L2):

        * ``raw_pixels``: grayscale pixels, at most 32×32;
        * ``frozen_features``: the pretrained RGB backbone's pooled features, before any new head;
        * ``clip_zero_shot``: each image as its CLIP zero-shot class-probability vector over the class
          names (``uses_class_names``: UCDIR methods do not get class names, like ``oracle_best``
          uses test labels); also its zero-shot classification accuracy (diagnostic).

        Returns:
            ``{"kind": kind, "results": direction -> metrics, ...}``.
        """
        extra: dict[str, Any] = {}
        if kind == "raw_pixels":
            # at most 32×32: a floor, and at 224 px raw pixels would not fit in memory at scale
            features = self.embed(encoder=partial(raw_pixel_features, max_size=32), desc="baseline (raw pixels)")
        elif kind == "frozen_features":
            features = self.embed(encoder=self.model.backbone.rgb_features, desc="baseline (frozen features)")
        elif kind == "clip_zero_shot":
            image_features = self.clip_features(desc="baseline (CLIP zero-shot)")
            features = zero_shot_probabilities(
                self.clip, self.config["model"]["clip_model"], image_features, self.class_names,
                pretrained=self.config["model"]["clip_pretrained"])
            predicted = features.argmax(1).numpy()
            extra = {"uses_class_names": True, "class_names": list(self.class_names),
                     "top1_accuracy": float(100 * (predicted == self.true_labels).mean())}
        else:
            raise ValueError(f"unknown starting point {kind!r}: choose one of {self.starting_point_kinds()}")
        # L2-normalised first, as the model's embeddings are, then centred and normalised like them
        return {"kind": kind, "results": self.evaluate(F.normalize(features.float(), dim=-1)), **extra}

    def clip_features(self, desc: str = "CLIP features") -> torch.Tensor:
        """The frozen CLIP's image embedding of every image (no augmentation)."""
        return self.embed(encoder=partial(encode_clip_images, self.clip), desc=desc)

    def record_baseline(self) -> None:
        """Evaluate every starting point (before any training) and keep them in the history."""
        # The baselines draw no random numbers from the run's streams: training is the same with or without them.
        devices = [self.device] if self.device.type == "cuda" else []
        for kind in self.starting_point_kinds():
            with torch.random.fork_rng(devices=devices):
                baseline = self.baseline(kind)
            self.state.history.append({"stage": "baseline", "epoch": 0, "baseline": baseline})
            mean = mean_metrics(baseline["results"])
            note = " (uses class names)" if baseline.get("uses_class_names") else ""
            self.accelerator.print(f"[starting point: {kind.replace('_', ' ')}{note}] "
                                   + ", ".join(f"{k}={v:.2f}" for k, v in mean.items()))
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)

    def label_free_score(self, embeddings: torch.Tensor) -> float:
        """The model-selection score that uses no labels: pseudo-label P@1 across domains.

        The share of queries whose top-1 neighbour in another domain carries the same aligned
        cluster id, averaged over ordered domain pairs (the UCDIR P@1 with pseudo-labels in place
        of classes). An epoch where the embedding agrees with its own clusters across domains scores high.
        """
        results = evaluate_domains(
            self.retrieval_features(embeddings), self.state.labels.numpy(), self.domains.numpy(),
            domain_names=self.domain_names, ks=(1,), knn=self.config["eval"]["knn"], map_at_all=False,
        )
        return mean_metrics(results)["precision_at_1"]

    def record_evaluation(self, results: dict[str, dict[str, float]], label_free_score: float | None = None) -> None:
        """Append an evaluation to the history, the metrics file and the trackers."""
        state = self.state
        state.history.append({"stage": state.stage, "epoch": state.epoch, "pseudo_label_nmi": self.last_nmi,
                              "label_free_score": label_free_score, "results": results})
        if self.accelerator.is_main_process:
            write_records(self.output_dir, state.history)
        mean = mean_metrics(results)
        self.accelerator.log({f"eval/{k}": v for k, v in mean.items()}, step=state.epoch)
        self.accelerator.print(f"[{state.stage} epoch {state.epoch}] "
                               + ", ".join(f"{k}={v:.2f}" for k, v in mean.items()))

    # ------------------------------------------------------------------ pseudo-labels
    @property
    def last_nmi(self) -> float | None:
        """NMI of the latest pseudo-labels with the true classes (diagnostics only)."""
        clusterings = [r for r in self.state.history if "clustering" in r]
        return clusterings[-1]["clustering"]["nmi"] if clusterings else None

    def cluster(self, embeddings: torch.Tensor) -> dict[str, Any]:
        """Cluster per domain, align ids, update labels and keep-mask; returns the clustering record."""
        result = self.labeler.fit(embeddings.numpy(), self.domains.numpy(), true_labels=self.true_labels)
        # Every process clusters the same gathered features; rank 0's labels are authoritative.
        labels = broadcast(torch.as_tensor(result.labels, dtype=torch.long).to(self.device), from_process=0).cpu()
        self.state.labels = labels
        self.state.keep_mask = confident_mask(
            F.normalize(embeddings, dim=-1), labels, self.domains, float(self.config["cluster"]["keep_ratio"])
        )
        per_domain = result.nmi_per_domain
        info = {
            "ids_changed": result.ids_changed,
            "matching_cost": float(result.matching_cost),
            "nmi": _as_float(result.nmi),
            "ari": _as_float(result.ari),
            "nmi_per_domain": dict(zip(self.domain_names, map(float, per_domain))) if per_domain is not None else None,
        }
        self.accelerator.print("clustering: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k != "nmi_per_domain"
        ))
        self.state.history.append({"stage": self.state.stage, "epoch": self.state.epoch, "clustering": info})
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)
        return info

    def record_repair(self, epoch: int, before: torch.Tensor, after: torch.Tensor,
                      total: bool = False) -> dict[str, Any]:
        """Log a prompts-stage re-pairing (how many labels changed, and how many of those are right: diagnostics only).

        Args:
            epoch: The prompt epoch of the re-pairing (the stage's last epoch for the total).
            before: Pseudo-labels before it (for the total: at the start of the stage).
            after: Pseudo-labels after it.
            total: This record is the stage's total (start of the stage vs its end).
        """
        info = {"repair": "total" if total else "step", **relabel_precision(before, after, self.true_labels)}
        precision = info["precision"]
        self.accelerator.print(
            f"prompts stage: {'in all, ' if total else ''}re-paired {info['changed']} labels "
            f"({100 * info['share']:.2f} %)"
            + ("" if precision is None else f", {100 * precision:.1f} % of them right (diagnostic, uses labels)"))
        self.state.history.append({"stage": "prompts", "epoch": epoch, "repair": info})
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)
        return info

    def init_prototypes(self, embeddings: torch.Tensor) -> None:
        """Start the shared prototypes at the cluster centroids of ``embeddings``."""
        if "prototype" in self.losses.loss_funcs:
            centroids = cluster_centroids(embeddings, self.state.labels, self.num_clusters)
            self.losses.loss_funcs["prototype"].init_prototypes(centroids.to(self.device))

    def sync_prototypes(self) -> None:
        """Average the EMA prototypes over processes (each process updated them on its own batches)."""
        if self.accelerator.num_processes > 1 and "prototype" in self.losses.loss_funcs:
            prototypes = self.losses.loss_funcs["prototype"].prototypes
            prototypes.copy_(F.normalize(self.accelerator.reduce(prototypes.clone(), reduction="mean"), dim=-1))

    # ------------------------------------------------------------------ optimisation helpers
    def set_learning_rates(self, lr: float | None = None) -> None:
        """Set every parameter group to ``lr``, or (None) to the ``synergy`` section's per-group rates."""
        synergy = self.config["synergy"]
        for group in self.optimizer.param_groups:
            group["lr"] = lr if lr is not None else synergy["lr_backbone" if group["name"] == "backbone" else "lr_head"]

    def check_finite(self, terms: Mapping[str, torch.Tensor], step: int) -> None:
        """Raise :class:`NonFiniteLossError` naming the term, stage, epoch and step of a NaN/inf loss,
        the stage's learning-rate option and how to continue."""
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                stage = self.state.stage
                rates = LEARNING_RATE_KEYS.get(stage, ("synergy.lr_backbone", "synergy.lr_head"))
                latest = latest_checkpoint(self.checkpoint_dir)
                if stage == "synergy" and latest is not None:  # its learning rates may change on resume
                    then = f"The last good checkpoint ({latest.name}) is kept: continue with --resume."
                else:
                    then = f"Start again with --overwrite ({' and '.join(rates)} cannot change on resume)."
                raise NonFiniteLossError(
                    f"Loss term '{name}' is {value.item()} in stage '{stage}', epoch {self.state.epoch}, step {step}. "
                    f"Lower {' and '.join(rates)} (or disable mixed precision). {then}"
                )

    # ------------------------------------------------------------------ checkpoints
    def save(self, tag: str) -> Path:
        """Write a resumable checkpoint named ``tag`` (atomic)."""
        meta = {"stage": self.state.stage, "epoch": self.state.epoch, "config": self.config,
                "dataset": self._fingerprint}
        return save_checkpoint(self.accelerator, self.checkpoint_dir, tag, meta)

    def resume(self) -> Path:
        """Load the latest complete checkpoint of ``output_dir`` after checking it is the same experiment.

        Options listed in ``SAFE_ON_RESUME`` may differ from the checkpoint's (learning rates take
        effect); any other config change, or a different dataset, is refused.

        Returns:
            The checkpoint folder loaded.

        Raises:
            FileNotFoundError: No complete checkpoint in ``output_dir/checkpoints``.
            ResumeMismatchError: The config or the dataset differs from the checkpoint's.
        """
        folder = latest_checkpoint(self.checkpoint_dir, log=self.accelerator.print)
        if folder is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint in {self.checkpoint_dir} (a run writes its first one after the "
                "warm-up). Start the run again with --overwrite, or without --resume in a new --output-dir."
            )
        meta = read_checkpoint_meta(folder)
        check_resume_compatible(meta, self.config, dataset_fingerprint(self.dataset))
        planned = self.stages[-1].planned_epochs(len(self.dataset), self.accelerator.num_processes)
        if meta.get("stage") in ("synergy", "done") and int(meta.get("epoch", 0)) > planned:
            raise ConfigError(
                f"--resume: the checkpoint {folder.name} is at synergy epoch {meta['epoch']}, past the {planned} "
                f"epochs synergy.epochs={self.config['synergy']['epochs']} asks for: give synergy.epochs >= "
                f"{meta['epoch']} to train on, or use the run's exported model as it is")
        load_checkpoint(self.accelerator, folder)
        self.set_learning_rates()
        self.accelerator.print(f"resumed from {folder} (stage {self.state.stage}, epoch {self.state.epoch})")
        return folder


def _as_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("overall", None)
    return None if value is None else float(value)
