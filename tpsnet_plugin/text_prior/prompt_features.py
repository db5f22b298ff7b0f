"""The frozen prompt features T (D×C×e): one holder that the model, the image-text loss and the miner read."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PromptFeatures"]


class PromptFeatures(nn.Module):
    """Holds the frozen prompt features ``T``: for each of D domains, one feature per cluster (D×C×e).

    The prompts stage sets them once; :class:`~tpsnet_plugin.models.TPSNet`,
    :class:`~tpsnet_plugin.losses.ImageTextCrossEntropyLoss` and
    :class:`~tpsnet_plugin.miners.DomainPromptMiner` built with the same holder all read the new
    features from then on, so no copy can fall behind. The features are a persistent buffer: they
    are saved in the state dict of the module that owns the holder (the model) and move with its
    ``.to()``.

    Args:
        features: Initial features D×C×e, or None (no text prior yet).
    """

    features: torch.Tensor | None

    def __init__(self, features: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("features", None)
        if features is not None:
            self.set(features)

    @property
    def num_domains(self) -> int | None:
        """D (None without features)."""
        return None if self.features is None else self.features.shape[0]

    @property
    def num_clusters(self) -> int | None:
        """C, the prompts per domain (None without features)."""
        return None if self.features is None else self.features.shape[1]

    @torch.no_grad()
    def set(self, features: torch.Tensor | None) -> None:
        """Install new features (detached copy, as given: device and dtype are the caller's choice), or clear them.

        Args:
            features: Tensor D×C×e, finite, with at least one domain and one cluster; None switches the prior off.

        Raises:
            TypeError: ``features`` is not a tensor.
            ValueError: The shape is not D×C×e or a value is NaN/inf.
        """
        if features is None:
            self.features = None
            return
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"text_features must be a tensor D×C×e, got {type(features).__name__}")
        if features.ndim != 3:
            raise ValueError(f"text_features must be a tensor D×C×e (domains × clusters × width), got shape "
                             f"{tuple(features.shape)}; reshape a flat (D*C)×e tensor with .view(D, C, -1)")
        if 0 in features.shape:
            raise ValueError(f"text_features must have at least one domain, cluster and feature, got "
                             f"{tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("text_features contain NaN or inf values, which would make every loss non-finite and "
                             "silently turn the label refinement off; pass finite prompt features")
        self.features = features.detach().clone()

    def require(self, num_clusters: int, user: str) -> torch.Tensor:
        """The features, checked to have ``num_clusters`` prompts per domain.

        Args:
            num_clusters: The C the reader was built for.
            user: The reader's name, for the error message.

        Raises:
            RuntimeError: No features are set yet.
            ValueError: The features have another C.
        """
        if self.features is None:
            raise RuntimeError(f"{user} needs the prompt features: call set_text_features(text_features) first "
                               "(in training, the prompts stage sets them)")
        if self.features.shape[1] != num_clusters:
            raise ValueError(f"{user} was built for num_clusters={num_clusters} but the prompt features have "
                             f"shape {tuple(self.features.shape)} (D x C x e)")
        return self.features

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The saved features define the prompts: adopt their shape (and presence) before loading.
        key = prefix + "features"
        if isinstance(state_dict.get(key), torch.Tensor):
            self.set(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args)
