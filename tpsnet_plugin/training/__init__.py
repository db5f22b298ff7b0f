"""Training: the Accelerate trainer, its stages and hooks, config loading and checkpoints."""

from .augment import BatchAugment
from .batches import TrainingBatches
from .builder import (
    RunData,
    RunModel,
    RunSetup,
    StageModel,
    build_data,
    build_hooks,
    build_model,
    build_setup,
    build_stages,
)
from .config import default_config, load_config, merge_config
from .context import HookContext, StageContext
from .data import build_dataset
from .hooks import CheckpointHook, EndOfEpochHook, EvaluationHook, LoggingHook, ReclusterHook
from .loss_guard import NonFiniteLossError
from .loss_terms import LOSS_TERMS, LossTable, LossTerm, SynergyBatch, TermSetup, build_losses
from .setup import build_accelerator, build_optimizer
from .stages import ClusteringStage, PromptStage, Stage, SynergyStage, WarmupStage
from .state import TrainingState
from .trainer import TPSNetTrainer

__all__ = [
    "BatchAugment",
    "CheckpointHook",
    "ClusteringStage",
    "EndOfEpochHook",
    "EvaluationHook",
    "HookContext",
    "LoggingHook",
    "LOSS_TERMS",
    "LossTable",
    "LossTerm",
    "SynergyBatch",
    "NonFiniteLossError",
    "PromptStage",
    "ReclusterHook",
    "Stage",
    "StageContext",
    "RunData",
    "RunModel",
    "RunSetup",
    "StageModel",
    "SynergyStage",
    "TermSetup",
    "TPSNetTrainer",
    "TrainingBatches",
    "TrainingState",
    "WarmupStage",
    "build_accelerator",
    "build_dataset",
    "build_data",
    "build_hooks",
    "build_losses",
    "build_model",
    "build_setup",
    "build_stages",
    "build_optimizer",
    "default_config",
    "load_config",
    "merge_config",
]
