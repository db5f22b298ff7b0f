"""One entry point that builds a TPSNet from the ``model`` section of a config.

Architectures are data (the config), as in open_clip's ``create_model``: the trainer, ``retrieve``
and the benchmarks all build their networks here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..backbones import PhasePriorBackbone
from .tpsnet import TPSNet


def create_tpsnet(
    model_config: Mapping[str, Any],
    embed_dim: int,
    num_domains: int,
    num_clusters: int,
    *,
    image_size: int | None = None,
    pretrained: bool | None = None,
    clip: torch.nn.Module | None = None,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> TPSNet:
    """Build the TPSNet a config's ``model`` section describes.

    Args:
        model_config: The ``model`` section of a resolved config (see ``default_config.yaml``).
        embed_dim: Embedding width e (the CLIP text width when the text prior is on).
        num_domains: Number of domains D.
        num_clusters: Number of clusters C.
        image_size: Side of the training images (checked against a ViT CLIP tower with ``rgb_from_clip``).
        pretrained: Override every pretrained-weight option of the config; ``False`` builds the
            architecture only (for loading trained weights afterwards). None keeps the config's.
        clip: With ``model.rgb_from_clip``, the already loaded open_clip model whose image tower
            starts the RGB backbone; None loads ``model.clip_model`` / ``model.clip_pretrained``.
        normalisation: ``(mean, std)`` of the RGB input, e.g. from a trained model's config; None
            takes the CLIP's with ``rgb_from_clip``, else the timm model's.

    Returns:
        A TPSNet whose text features start as zeros (the prompts stage sets them) when the text prior is on.
    """
    load_weights = pretrained is not False
    from_clip = bool(model_config.get("rgb_from_clip"))
    mean, std = normalisation if normalisation is not None else (None, None)
    if from_clip and normalisation is None:
        from ..text_prior.image_tower import clip_normalisation

        mean, std = clip_normalisation(model_config["clip_model"], model_config["clip_pretrained"])
    backbone = PhasePriorBackbone(
        model_config["rgb_backbone"],
        phase_model=model_config["phase_backbone"] if model_config["phase_prior"] else None,
        embed_dim=embed_dim,
        pretrained=bool(model_config["pretrained"]) and load_weights,
        checkpoint_path=model_config["checkpoint_path"] if load_weights else None,
        phase_pretrained=bool(model_config["phase_pretrained"]) and load_weights,
        phase_amplitude=model_config["phase_amplitude"],
        num_heads=model_config["num_heads"],
        rgb_kwargs=dict(model_config["rgb_kwargs"]),
        phase_kwargs=dict(model_config["phase_kwargs"]),
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )
    if from_clip and load_weights:
        from ..text_prior.domain_prompt_learner import create_frozen_clip
        from ..text_prior.image_tower import init_backbone_from_clip

        if clip is None:
            clip = create_frozen_clip(model_config["clip_model"], model_config["clip_pretrained"])
        init_backbone_from_clip(backbone, clip, image_size)
    text_features = torch.zeros(num_domains, num_clusters, embed_dim) if model_config["text_prior"] else None
    return TPSNet(
        backbone,
        text_features,
        num_heads=model_config["num_heads"],
        weight_temperature=model_config["weight_temperature"],
    )
