"""TPSNet losses as pytorch-metric-learning loss functions."""

from .image_text_cross_entropy_loss import ImageTextCrossEntropyLoss
from .instance_contrastive_loss import InstanceContrastiveLoss
from .prompt_contrastive_loss import PromptContrastiveLoss
from .prototype_cross_entropy_loss import PrototypeCrossEntropyLoss

__all__ = [
    "ImageTextCrossEntropyLoss",
    "InstanceContrastiveLoss",
    "PromptContrastiveLoss",
    "PrototypeCrossEntropyLoss",
]
