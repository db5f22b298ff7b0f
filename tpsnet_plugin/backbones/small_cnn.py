"""A small CNN for 28-32 px images (digits), registered with timm as ``small_cnn``.

ImageNet backbones waste most of their depth on 28 px inputs (a ResNet stem alone reduces them to
7×7). This network keeps four 3×3 conv-BN-ReLU stages with three 2×2 max-pools, so a 28 px digit
ends as a 3×3 map and a 32 px one as 4×4. It follows timm's model contract, so it is built and
swapped by name like any timm model::

    import tpsnet_plugin.backbones  # registers "small_cnn"
    model = timm.create_model("small_cnn", num_classes=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead, ConvNormAct
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages with 2×2 max-pools between them, global pooling and a linear head.

    Args:
        num_classes: Classifier outputs; 0 removes the classifier (``forward`` then returns the
            pooled features).
        in_chans: Input channels (3 for RGB, 1 for grayscale or phase images).
        widths: Output channels of each stage; the stages after the first start with a 2×2 max-pool.
        global_pool: timm global pooling type (``"avg"``, ``"max"``, ``"avgmax"``, ``""`` for none).
        drop_rate: Dropout before the classifier.
        device: Device to create the parameters on.
        dtype: Dtype of the parameters.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage, e.g. (32, 64, 128, 256)")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        stages = []
        self.feature_info = []
        channels, reduction = in_chans, 1
        for index, width in enumerate(widths):
            # Downsample at the start of a stage (as timm's ResNets do) so feature_info's reduction
            # is the stride of the stage's own output.
            pool = [nn.MaxPool2d(2)] if index > 0 else []
            reduction *= 2 if index > 0 else 1
            stages.append(nn.Sequential(*pool, ConvNormAct(channels, width, kernel_size=3, **dd)))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{index}"))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = channels
        self.head = ClassifierHead(channels, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

    def get_classifier(self) -> nn.Module:
        """Return the classifier layer (``nn.Identity`` when ``num_classes == 0``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier.

        Args:
            num_classes: New number of outputs; 0 removes the classifier.
            global_pool: New global pooling type; None keeps the current one.
        """
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images B×in_chans×H×W to the last stage's feature map B×num_features×h×w."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map and apply the classifier.

        Args:
            x: Feature map from :meth:`forward_features`.
            pre_logits: Return the pooled features (B×num_features) instead of the logits.
        """
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or pooled features when ``num_classes == 0``) for images B×in_chans×H×W."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No published weights (url and hf_hub_id empty); mean/std suit white-on-black digits in [0, 1].
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stages.0.0.conv",
        "classifier": "head.fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"small_cnn": _cfg()})


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """Small 4-stage CNN (32-64-128-256 channels) for 28-32 px images; no pretrained weights exist.

    Args:
        pretrained: Must be False: there are no published weights. Load your own with
            ``timm.create_model("small_cnn", checkpoint_path="weights.pth")``.
        **kwargs: Passed to :class:`SmallCNN` (``num_classes``, ``in_chans``, ``widths``, ...).
    """
    if pretrained:
        raise ValueError(
            "small_cnn has no pretrained weights: use pretrained=False, or load your own weights "
            "with timm.create_model('small_cnn', checkpoint_path='weights.pth')"
        )
    return build_model_with_cfg(
        SmallCNN, "small_cnn", pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs
    )
