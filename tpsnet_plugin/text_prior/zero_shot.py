"""A CLIP's zero-shot classification as a retrieval embedding: the starting point a CLIP gives for free.

Each image is embedded as its zero-shot class-probability vector over the class names
(``softmax(logit_scale · cos(image, class text))``); these vectors are then retrieved like any
embedding. UCDIR methods get no class names, so this starting point is reported apart, flagged
``uses_class_names`` (as ``oracle_best`` is flagged for using test labels): a method that does
not beat it is not worth more than the CLIP itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from torch import nn

from ..data.icons import TEMPLATES as PACKAGED_CLIP_TEMPLATES
from ..errors import ConfigError
from .packaged_weights import is_packaged_tag

__all__ = ["zero_shot_probabilities", "zero_shot_templates"]


def zero_shot_templates(pretrained: str | None) -> Sequence[str | Callable[[str], str]]:
    """The prompt templates a CLIP was trained with: the corpus templates for the weights packaged
    here, open_clip's simple ImageNet templates for any other CLIP."""
    return PACKAGED_CLIP_TEMPLATES if is_packaged_tag(pretrained) else SIMPLE_IMAGENET_TEMPLATES


@torch.no_grad()
def zero_shot_probabilities(
    clip: nn.Module,
    model_name: str,
    image_features: torch.Tensor,
    class_names: Sequence[str] | None,
    pretrained: str | None = None,
    templates: Sequence[str | Callable[[str], str]] | None = None,
) -> torch.Tensor:
    """Zero-shot class probabilities of CLIP image features.

    Args:
        clip: The open_clip model the image features come from.
        model_name: Its open_clip name (selects the tokenizer).
        image_features: N×e image embeddings of ``clip`` (any scale).
        class_names: One name per class, in label order (prompt ensembling over ``templates``).
        pretrained: The CLIP's pretrained tag or file, to pick the default templates.
        templates: Format strings (``"a photo of {}"``) or callables; None = :func:`zero_shot_templates`.

    Returns:
        N×K float32 probabilities on the CPU.

    Raises:
        ValueError: No class names, or names that are empty or not distinct.
    """
    if not class_names:
        raise ConfigError("zero-shot needs class names (one per class, in label order): set data.class_names")
    names = [str(name).strip() for name in class_names]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"class names must be non-empty and distinct, got {names}")
    device = next(clip.parameters()).device
    weights = build_zero_shot_classifier(
        clip, open_clip.get_tokenizer(model_name), names, list(templates or zero_shot_templates(pretrained)),
        num_classes_per_batch=32, device=device)
    scale = float(clip.logit_scale.detach().exp().reshape(-1)[0])
    logits = scale * F.normalize(image_features.to(device).float(), dim=-1) @ weights.float()
    return logits.softmax(dim=-1).cpu()
