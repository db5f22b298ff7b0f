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

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..errors import TPSNetError
from ..evaluation import mean_metrics
from ..models.pretrained import pretrained_config
from ..utils.io import atomic_write_text
from .builder import build_data, build_model, build_setup, build_stages, zero_shot_enabled
from .checkpoint import RunCheckpoints
from .config import default_config, flatten_config, merge_config, validate_config
from .data import (
    dataset_fingerprint,
    images_as_float,
    unlabelled_view,
)
from .hooks import EndOfEpochHook
from .progress import progress
from .pseudo_labelling import PseudoLabelling
from .reporting import build_summary, export_model, write_records, write_summary
from .run_dir import (
    OutputDirLock,
    TrainingInterrupted,
    check_output_dir,
    check_output_dir_outside,
    raise_if_stopped,
    remove_run_artifacts,
    stop_requested,
    write_run_marker,
)
from .run_evaluation import Embedder, RunEvaluator
from .setup import build_accelerator
from .stages import Stage, SynergyStage
from .state import PromptContext, TrainingState


class NonFiniteLossError(TPSNetError, RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is left untouched."""


# The learning-rate options of each stage, named when its loss turns NaN.
LEARNING_RATE_KEYS = {"warmup": ("warmup.lr",), "prompts": ("prompts.lr",)}


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

        # The parts, built in this order (each draws from the seeded random streams)
        data = build_data(cfg, self.accelerator.num_processes, show_progress=self.accelerator.is_local_main_process)
        self.dataset, self.domains, self.true_labels = data.dataset, data.domains, data.true_labels
        self.domain_names, self.num_domains = data.domain_names, len(data.domain_names)
        self.num_clusters, self.image_size, self.images = data.num_clusters, data.image_size, data.images
        self.warmup_batch_size, self.synergy_batch_size = data.warmup_batch_size, data.synergy_batch_size
        self.class_names, self.setup_warnings = data.class_names, list(data.warnings)
        self.num_workers = int(cfg["data"]["num_workers"])
        self.zero_shot = zero_shot_enabled(cfg, self.class_names)  # checked now: a refused setting fails early
        built = build_model(cfg, data, self.device, self.zero_shot)
        self.model, self.prompt_learner, self.clip = built.model, built.prompt_learner, built.clip
        self.embed_dim, self.memory_format = built.embed_dim, built.memory_format
        setup = build_setup(cfg, self.accelerator, built, self.num_clusters)
        self.stage_model, self.optimizer, self.augment = setup.stage_model, setup.optimizer, setup.augment
        self.labeler, self.losses = setup.labeler, setup.losses
        self.stages = list(stages) if stages is not None else build_stages(
            cfg, data, with_prompts=self.prompt_learner is not None, hooks=hooks)
        self.state = TrainingState([stage.name for stage in self.stages])
        # Everything resumable goes through Accelerate's save_state/load_state (fixed order).
        self.accelerator.register_for_checkpointing(self.state, self.labeler)
        if "prototype" in self.losses.loss_funcs:
            self.accelerator.register_for_checkpointing(self.losses.loss_funcs["prototype"])
        if self.prompt_learner is not None:
            self.accelerator.register_for_checkpointing(PromptContext(self.prompt_learner))

        for warning in self.setup_warnings:
            warnings.warn(warning, stacklevel=2)
        self.checkpoints = RunCheckpoints(self.accelerator, self.checkpoint_dir, cfg,
                                          partial(dataset_fingerprint, self.dataset))
        self._epoch_embeddings: tuple[tuple[str, int], torch.Tensor] | None = None
        self.embedder = Embedder(self.accelerator, self.stage_model, self.train_dataset(),
                                 int(cfg["eval"]["batch_size"]), self.num_workers, self.memory_format, self.progress)
        self.evaluator = RunEvaluator(self.embedder, cfg, self.domains, self.true_labels, self.domain_names,
                                      self.model, self.clip, self.class_names, self.zero_shot)
        self.labelling = PseudoLabelling(self.labeler, self.state, self.losses, self.accelerator, self.domains,
                                         self.true_labels, self.domain_names, self.num_clusters,
                                         cfg["cluster"]["keep_ratio"], self.record)

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
        latest = self.checkpoints.latest()
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
        """A progress bar on a terminal, one line per loop in a log (main process only); every step
        first checks for a stop signal."""
        for item in progress(iterable, desc, enabled=self.accelerator.is_local_main_process):
            raise_if_stopped()
            yield item

    # ------------------------------------------------------------------ embedding and evaluation
    def embed(self, synergy: bool = True, encoder=None, desc: str = "embedding") -> torch.Tensor:
        """Every image's features in dataset order, on the CPU (see :class:`Embedder`)."""
        return self.embedder(synergy, encoder, desc)

    def epoch_embeddings(self) -> torch.Tensor:
        """The retrieval embedding of every image at the current stage and epoch, computed once."""
        stage = "synergy" if self.state.stage == "done" else self.state.stage
        key = (stage, self.state.epoch)
        if self._epoch_embeddings is None or self._epoch_embeddings[0] != key:
            self._epoch_embeddings = (key, self.embed(synergy=stage == "synergy"))
        return self._epoch_embeddings[1]

    def retrieval_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The evaluation post-processing of every embedding (see :class:`RunEvaluator`)."""
        return self.evaluator.retrieval_features(embeddings)

    def evaluate(self, embeddings: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
        """Evaluate every ordered domain pair (queries: all of A, gallery: all of B) with true labels."""
        return self.evaluator.evaluate(self.epoch_embeddings() if embeddings is None else embeddings)

    def evaluate_features(self, features: torch.Tensor) -> dict[str, dict[str, float]]:
        """Evaluate given retrieval features (one row per image, dataset order) with the config's metrics."""
        return self.evaluator.evaluate_features(features)

    def baseline(self, kind: str = "raw_pixels") -> dict[str, Any]:
        """One of the run's starting points, evaluated like the trained embedding (:meth:`RunEvaluator.baseline`)."""
        return self.evaluator.baseline(kind)

    def clip_features(self, desc: str = "CLIP features") -> torch.Tensor:
        """The frozen CLIP's image embedding of every image (no augmentation)."""
        return self.evaluator.clip_features(desc)

    def record_baseline(self) -> None:
        """Evaluate every starting point (before any training) and keep them in the history."""
        # The baselines draw no random numbers from the run's streams: training is the same with or without them.
        devices = [self.device] if self.device.type == "cuda" else []
        for kind in self.evaluator.starting_point_kinds():
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
        """Pseudo-label P@1 across domains, the label-free model-selection score (:class:`RunEvaluator`)."""
        return self.evaluator.label_free_score(embeddings, self.state.labels)

    def record_evaluation(self, results: dict[str, dict[str, float]], label_free_score: float | None = None) -> None:
        """Append an evaluation to the history, the metrics file and the trackers."""
        state = self.state
        self.record({"stage": state.stage, "epoch": state.epoch, "pseudo_label_nmi": self.last_nmi,
                     "label_free_score": label_free_score, "results": results})
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
        """Cluster per domain and align ids into the run's pseudo-labels (:class:`PseudoLabelling`)."""
        return self.labelling.cluster(embeddings)

    def record_repair(self, epoch: int, before: torch.Tensor, after: torch.Tensor, total: bool = False) -> dict:
        """Log a prompts-stage re-pairing (diagnostics; :meth:`PseudoLabelling.record_repair`)."""
        return self.labelling.record_repair(epoch, before, after, total)

    def init_prototypes(self, embeddings: torch.Tensor) -> None:
        """Start the shared prototypes at the cluster centroids of ``embeddings``."""
        self.labelling.init_prototypes(embeddings)

    def sync_prototypes(self) -> None:
        """Average the EMA prototypes over processes."""
        self.labelling.sync_prototypes()

    def record(self, record: Mapping[str, Any]) -> None:
        """Append a record to the run's history and rewrite ``metrics.jsonl`` / ``clustering.jsonl``."""
        self.state.history.append(dict(record))
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)

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
                latest = self.checkpoints.latest()
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
        return self.checkpoints.save(tag, self.state.stage, self.state.epoch)

    def resume(self) -> Path:
        """Load the latest complete checkpoint of ``output_dir`` after checking it is the same experiment.

        Options marked ``resume_safe`` may differ from the checkpoint's (learning rates take effect);
        any other config change, or a different dataset, is refused.

        Returns:
            The checkpoint folder loaded.
        """
        last = self.stages[-1]
        planned = last.planned_epochs(len(self.dataset), self.accelerator.num_processes) \
            if isinstance(last, SynergyStage) else None
        folder = self.checkpoints.load_latest(planned)
        self.set_learning_rates()
        self.accelerator.print(f"resumed from {folder} (stage {self.state.stage}, epoch {self.state.epoch})")
        return folder
