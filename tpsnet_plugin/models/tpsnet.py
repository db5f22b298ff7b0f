"""TPSNet: backbone features refined by the frozen domain prompts (text–phase synergy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..text_prior.prompt_features import PromptFeatures

__all__ = ["TPSNet"]


class TPSNet(nn.Module):
    """Text–phase synergy network: the retrieval model of the synergy stage.

    The backbone (usually a :class:`~tpsnet_plugin.backbones.PhasePriorBackbone`) gives the fused
    tokens Z' (B×T×e) and the fused feature I_f (B×e). The prompt features T_d (C×e) of the image's
    domain query the tokens, ``A = CrossAttn(Q=T_d, K=V=Z')`` (C×e), and are weighted by how well
    each prompt matches the image, ``w = softmax(cos(I_f, T_d) / τ_w)``. The synergy feature is
    ``I' = LayerNorm(I_f + Σ_c w_c A_c)`` and the retrieval embedding is ``normalize(I')``. When
    the domain of an image is unknown, all D·C prompts are used as queries and weights.

    Args:
        backbone: A module with an integer ``num_features`` (= e) that either has
            ``forward_parts(x)`` returning ``rgb``, ``phase``, ``tokens`` (B×T×e) and ``fused``
            (B×e) like :class:`~tpsnet_plugin.backbones.PhasePriorBackbone`, or returns pooled
            features B×e from ``backbone(x)`` (used as a single token, e.g. a timm model built
            with ``num_classes=0``).
        text_features: Frozen prompt features T, D×C×e, from the prompts stage; held by
            :attr:`prompt_features` (saved in the state_dict, shared with the losses and the miner
            that read them). None switches the text prior off: the embedding is ``normalize(I_f)``.
            Set or replace them later with :meth:`set_text_features`.
        num_heads: Heads of the cross-attention; must divide e.
        weight_temperature: Temperature τ_w of the prompt weights w.
    """

    def __init__(
        self,
        backbone: nn.Module,
        text_features: torch.Tensor | None,
        num_heads: int = 8,
        weight_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        embed_dim = getattr(backbone, "num_features", None)
        if not isinstance(embed_dim, int):
            raise ValueError(
                "backbone must have an integer num_features attribute (its embedding width e), got "
                f"{type(backbone).__name__} without one"
            )
        if embed_dim % num_heads:
            raise ValueError(f"the backbone width ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not weight_temperature > 0:
            raise ValueError(f"weight_temperature must be positive, got {weight_temperature}")
        self.backbone = backbone
        self.embed_dim = embed_dim
        self.weight_temperature = weight_temperature
        # Built even without text features so that set_text_features() can switch the prior on.
        self.cross_attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.prompt_features = PromptFeatures()
        if text_features is not None:
            self.set_text_features(text_features)

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, revision: str | None = None) -> TPSNet:
        """The trained TPSNet saved in a folder or a Hugging Face Hub model repo, built from its ``config.json``.

        Args:
            name_or_folder: A folder holding ``model.safetensors`` and ``config.json`` (see
                :mod:`tpsnet_plugin.models.pretrained`; a run's ``model/`` or its output dir), or
                the id of a Hub model repo holding those two files (``owner/name``; publish a run's
                ``model/`` folder with ``huggingface_hub.upload_folder``).
            revision: The Hub revision (branch, tag or commit); None = the default branch.

        Returns:
            The model in eval mode; its config (image size, names, normalisation) is in ``model.config``.

        Raises:
            WeightsDownloadError: Neither a folder here nor a Hub model that could be fetched.
        """
        from .pretrained import load_pretrained, resolve_pretrained

        model, config = load_pretrained(resolve_pretrained(name_or_folder, revision))
        model.config = config
        return model

    @property
    def text_features(self) -> torch.Tensor | None:
        """The frozen prompt features T (D×C×e) of :attr:`prompt_features`, or None without the text prior."""
        return self.prompt_features.features

    @property
    def num_domains(self) -> int | None:
        """D, the number of domains of the text features (None without them)."""
        return self.prompt_features.num_domains

    @property
    def num_clusters(self) -> int | None:
        """C, the number of prompts (clusters) per domain (None without text features)."""
        return self.prompt_features.num_clusters

    def set_text_features(self, text_features: torch.Tensor | None) -> None:
        """Install new prompt features (e.g. after a new prompts stage), or None to switch the prior off.

        Args:
            text_features: Tensor D×C×e with e = ``embed_dim``; copied (detached) to the device and
                dtype of the module's parameters.
        """
        tensor = isinstance(text_features, torch.Tensor)
        if tensor and text_features.ndim == 3 and text_features.shape[-1] != self.embed_dim:
            raise ValueError(
                f"text_features width {text_features.shape[-1]} does not match the backbone width "
                f"{self.embed_dim}; build the backbone with embed_dim={text_features.shape[-1]}"
            )
        parameter = next(self.parameters())
        if tensor:
            text_features = text_features.to(parameter.device, parameter.dtype)
        self.prompt_features.set(text_features)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the shared holder kept the features in a buffer of this module.
        legacy = prefix + "text_features"
        if legacy in state_dict:
            state_dict[prefix + "prompt_features.features"] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _backbone_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if hasattr(self.backbone, "forward_parts"):
            return self.backbone.forward_parts(images)
        fused = self.backbone(images)
        if fused.ndim != 2 or fused.shape[1] != self.embed_dim:
            raise ValueError(
                f"backbone(images) must return pooled features B×{self.embed_dim}, got "
                f"{tuple(fused.shape)}; build timm backbones with num_classes=0"
            )
        return {"rgb": None, "phase": None, "tokens": fused.unsqueeze(1), "fused": fused}

    def _queries(self, domains: torch.Tensor | Sequence[int] | None, batch_size: int) -> torch.Tensor:
        text = self.text_features
        if domains is None:
            return text.reshape(1, -1, self.embed_dim).expand(batch_size, -1, -1)
        domains = torch.as_tensor(domains, device=text.device)
        if domains.shape != (batch_size,) or domains.is_floating_point():
            raise ValueError(
                f"domains must be integer domain ids of shape ({batch_size},), got "
                f"{domains.dtype} of shape {tuple(domains.shape)}"
            )
        if batch_size and (domains.min() < 0 or domains.max() >= text.shape[0]):
            raise ValueError(
                f"domain ids must lie in [0, {text.shape[0]}) (the domains of text_features), got "
                f"[{int(domains.min())}, {int(domains.max())}]"
            )
        return text[domains.long()]

    def forward(
        self,
        images: torch.Tensor,
        domains: torch.Tensor | Sequence[int] | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor | None]:
        """Retrieval embeddings.

        Args:
            images: Batch of images in the layout the backbone expects (B×3×H×W in [0, 1] for a
                :class:`~tpsnet_plugin.backbones.PhasePriorBackbone`).
            domains: Domain id per image (B,), selecting the C prompts of its domain; None uses all
                D·C prompts. Ignored without text features.
            return_dict: Return every intermediate instead of the embedding alone.

        Returns:
            L2-normalised embeddings B×e, or with ``return_dict`` a dict with ``embedding`` (those),
            ``rgb`` (I_rgb), ``phase`` (I_pha), ``fused`` (I_f), ``synergy`` (I' before
            normalisation) and ``weights`` (w, B×C or B×D·C); entries the model does not compute
            (no phase branch, no text features) are None.
        """
        parts = self._backbone_parts(images)
        fused = parts["fused"]
        synergy = weights = None
        if self.text_features is None:
            embedding = F.normalize(fused, dim=-1)
        else:
            queries = self._queries(domains, fused.shape[0]).to(fused.dtype)
            tokens = parts["tokens"]
            attended = self.cross_attn(queries, tokens, tokens, need_weights=False)[0]
            similarity = F.cosine_similarity(fused.unsqueeze(1), queries, dim=-1)
            weights = torch.softmax(similarity / self.weight_temperature, dim=-1)
            synergy = self.norm(fused + torch.einsum("bq,bqe->be", weights, attended))
            embedding = F.normalize(synergy, dim=-1)
        if not return_dict:
            return embedding
        return {
            "embedding": embedding,
            "rgb": parts["rgb"],
            "phase": parts["phase"],
            "fused": fused,
            "synergy": synergy,
            "weights": weights,
        }
