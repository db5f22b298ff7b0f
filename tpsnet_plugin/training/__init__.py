from .augment import BatchAugment
from .config import default_config, load_config, merge_config
from .trainer import NonFiniteLossError, TPSNetTrainer, build_dataset, build_model

__all__ = [
    "BatchAugment",
    "NonFiniteLossError",
    "TPSNetTrainer",
    "build_dataset",
    "build_model",
    "default_config",
    "load_config",
    "merge_config",
]
