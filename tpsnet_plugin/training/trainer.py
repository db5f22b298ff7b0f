"""The TPSNet trainer: a composition of a model, a training setup, stages and hooks.

``fit`` runs the stages in order (warm-up, clustering, prompts, synergy), checkpointing between
them; the synergy stage runs its end-of-epoch hooks (log, re-cluster, evaluate, checkpoint).
Stages and hooks see the run through a :class:`~tpsnet_plugin.training.context.StageContext` /
:class:`~tpsnet_plugin.training.context.HookContext`, never the trainer. True labels are only
read by the evaluation and the pseudo-label diagnostics: the batches the losses see carry none.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..models import TPSNet
from ..models.pretrained import pretrained_config
from ..utils.io import atomic_write_text
from .batches import TrainingBatches
from .builder import build_data, build_model, build_setup, build_stages, zero_shot_enabled
from .checkpoint import RunCheckpoints
from .config import default_config, flatten_config, merge_config, validate_config
from .context import HookContext, StageContext
from .data import dataset_fingerprint
from .hooks import EndOfEpochHook
from .loss_guard import LossGuard
from .progress import stoppable_progress
from .pseudo_labelling import PseudoLabelling
from .reporting import RunRecords, build_summary, export_model, write_summary
from .run_dir import (
    OutputDirLock,
    TrainingInterrupted,
    check_output_dir,
    check_output_dir_outside,
    remove_run_artifacts,
    stop_requested,
    write_run_marker,
)
from .run_evaluation import Embedder, EpochEmbeddings, RunEvaluator
from .setup import LearningRates, build_accelerator
from .stages import Stage, SynergyStage
from .state import PromptContext, TrainingState

__all__ = ["TPSNetTrainer"]


class TPSNetTrainer:
    """Train and evaluate TPSNet from a config dict (see ``default_config.yaml`` for every option).

    Args:
        config: A full or partial config dict (merged over the defaults).
        accelerator: An ``Accelerator``; None builds one from the config's ``accelerate`` section.
        stages: The stages ``fit`` runs, in order (each a :class:`Stage` with a distinct ``name``);
            None builds the config's: warm-up, clustering, prompts (with the text prior), synergy.
        hooks: The end-of-epoch hooks of the default synergy stage; None builds the config's
            (logging, re-clustering, evaluation, checkpoints). Ignored when ``stages`` is given.

    Attributes:
        data: The dataset and what is derived from it (:class:`~tpsnet_plugin.training.builder.RunData`).
        networks: The TPSNet, prompt learner and frozen CLIP (:class:`~tpsnet_plugin.training.builder.RunModel`).
        setup: The wrapped model, optimizer, augmentations, clusterer and losses (``RunSetup``).
        state: Stage, epoch, pseudo-labels and history (checkpointed).
        embedder / evaluator / labelling / records / checkpoints: The run's services (embedding every
            image, evaluating with true labels, pseudo-labels, history files, checkpoints).
        stage_context / hook_context: What the stages and hooks receive.

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
        self.accelerator = acc = accelerator or build_accelerator(cfg["accelerate"], self.output_dir)
        set_seed(int(cfg["seed"]))

        # The parts, built in this order (each draws from the seeded random streams)
        self.data = data = build_data(cfg, acc.num_processes, show_progress=acc.is_local_main_process)
        self.zero_shot = zero_shot_enabled(cfg, data.class_names)  # checked now: a refused setting fails early
        self.networks = networks = build_model(cfg, data, acc.device, self.zero_shot)
        self.setup = setup = build_setup(cfg, acc, networks, data.num_clusters)
        self.stages = list(stages) if stages is not None else build_stages(
            cfg, data, with_prompts=networks.prompt_learner is not None, hooks=hooks)
        self.state = state = TrainingState([stage.name for stage in self.stages])
        # Everything resumable goes through Accelerate's save_state/load_state (fixed order).
        acc.register_for_checkpointing(state, setup.labeler)
        if "prototype" in setup.losses.loss_funcs:
            acc.register_for_checkpointing(setup.losses.loss_funcs["prototype"])
        if networks.prompt_learner is not None:
            acc.register_for_checkpointing(PromptContext(networks.prompt_learner))
        for warning in data.warnings:
            warnings.warn(warning, stacklevel=2)

        self.checkpoints = RunCheckpoints(acc, self.output_dir / "checkpoints", cfg,
                                          partial(dataset_fingerprint, data.dataset))
        self.records = RunRecords(state, acc, self.output_dir)
        num_workers = int(cfg["data"]["num_workers"])
        self.progress = partial(stoppable_progress, enabled=acc.is_local_main_process)
        batches = TrainingBatches(data.dataset, data.images, data.domains, data.num_clusters, setup.augment, acc,
                                  num_workers, int(cfg["seed"]), networks.memory_format)
        self.embedder = Embedder(acc, setup.stage_model, batches.dataset, int(cfg["eval"]["batch_size"]),
                                 num_workers, networks.memory_format, self.progress)
        self.evaluator = RunEvaluator(self.embedder, cfg, data.domains, data.true_labels, data.domain_names,
                                      networks.model, networks.clip, data.class_names, self.zero_shot)
        self.labelling = PseudoLabelling(setup.labeler, state, setup.losses, acc, data.domains, data.true_labels,
                                         data.domain_names, data.num_clusters, cfg["cluster"]["keep_ratio"],
                                         self.records.record)
        self.epoch_embeddings = EpochEmbeddings(self.embedder, state)
        self.learning_rates = LearningRates(setup.optimizer, cfg["synergy"])
        self.hook_context = HookContext(acc, state, self.epoch_embeddings, self.labelling, self.evaluator,
                                        self.records, self.checkpoints)
        self.stage_context = StageContext(
            acc, state, batches, networks.model, setup.stage_model, setup.optimizer, self.learning_rates,
            setup.losses, networks.prompt_learner, self.embedder, self.labelling,
            LossGuard(state, self.checkpoints), self.progress, self.hook_context)

    @property
    def model(self) -> TPSNet:
        """The TPSNet being trained."""
        return self.networks.model

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
        self.records.record_starting_points(self.evaluator)
        names = [stage.name for stage in self.stages] + ["done"]
        for position, stage in enumerate(self.stages):
            order = self.state.stage_names
            if order.index(self.state.stage) > order.index(stage.name):
                continue
            stage.run(self.stage_context)
            if names[position + 1] == "done":
                self.state.stage = "done"  # the epoch stays: the final embeddings are those of the last epoch
            else:
                self.state.stage, self.state.epoch = names[position + 1], 0
                self.hook_context.save(f"{self.state.stage}-start")
        summary = self.finish()
        acc.end_training()
        return summary

    def finish(self) -> dict[str, Any]:
        """Build and write the summary, export the model and draw the plots."""
        acc, data, cfg = self.accelerator, self.data, self.config
        summary = build_summary(self.state.history, first_k=int(cfg["eval"]["ks"][0]), domain_names=data.domain_names,
                                setup_warnings=data.warnings, wall_seconds=self.state.elapsed,
                                num_processes=acc.num_processes, config=cfg)
        for warning in summary["warnings"]:
            acc.print(f"WARNING: {warning}")
        if acc.is_main_process:
            tpsnet = acc.unwrap_model(self.setup.stage_model).tpsnet
            export_model(acc, tpsnet, self.output_dir, pretrained_config(
                cfg["model"], tpsnet, embed_dim=self.networks.embed_dim, num_domains=len(data.domain_names),
                num_clusters=data.num_clusters, image_size=data.image_size, domain_names=data.domain_names,
                classes=list(data.dataset.classes),
            ))
            write_summary(self.output_dir, summary)
            if cfg["eval"]["plots"]:
                from .plots import save_run_plots

                save_run_plots(self.evaluator.retrieval_features(self.epoch_embeddings()), data, self.output_dir,
                               seed=int(cfg["seed"]), tsne_max_points=int(cfg["eval"]["tsne_max_points"]))
        return summary

    def resume(self) -> Path:
        """Load the latest complete checkpoint of ``output_dir`` after checking it is the same experiment.

        Options marked ``resume_safe`` may differ from the checkpoint's (learning rates take effect);
        any other config change, or a different dataset, is refused.

        Returns:
            The checkpoint folder loaded.
        """
        last = self.stages[-1]
        planned = last.planned_epochs(len(self.data.dataset), self.accelerator.num_processes) \
            if isinstance(last, SynergyStage) else None
        folder = self.checkpoints.load_latest(planned)
        self.learning_rates()
        self.accelerator.print(f"resumed from {folder} (stage {self.state.stage}, epoch {self.state.epoch})")
        return folder
