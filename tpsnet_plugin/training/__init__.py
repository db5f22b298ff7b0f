"""Training: the Accelerate trainer, its stages and hooks, config loading and checkpoints."""

from .augment import BatchAugment
from .config import default_config, load_config, merge_config
from .data import build_dataset
from .hooks import CheckpointHook, EndOfEpochHook, EvaluationHook, LoggingHook, ReclusterHook
from .loss_terms import LOSS_TERMS, LossTable, LossTerm, SynergyBatch, build_losses
from .setup import build_accelerator, build_optimizer
from .stages import ClusteringStage, PromptStage, Stage, SynergyStage, WarmupStage
from .state import TrainingState
from .trainer import NonFiniteLossError, StageModel, TPSNetTrainer

__all__ = [
    "BatchAugment",
    "CheckpointHook",
    "ClusteringStage",
    "EndOfEpochHook",
    "EvaluationHook",
    "LoggingHook",
    "LOSS_TERMS",
    "LossTable",
    "LossTerm",
    "SynergyBatch",
    "NonFiniteLossError",
    "PromptStage",
    "ReclusterHook",
    "Stage",
    "StageModel",
    "SynergyStage",
    "TPSNetTrainer",
    "TrainingState",
    "WarmupStage",
    "build_accelerator",
    "build_dataset",
    "build_losses",
    "build_optimizer",
    "default_config",
    "load_config",
    "merge_config",
]
