"""RGB + phase-prior backbone: two timm encoders whose features are fused by self-attention."""

from __future__ import annotations

import difflib
import os
import pickle
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..errors import ConfigError, WeightsFileError, describe_unsafe_pickle
from . import small_cnn as _small_cnn  # noqa: F401  (registers "small_cnn" with timm)
from .phase import phase_only

__all__ = ["PhasePriorBackbone"]


def _create_timm_model(
    name: str, argument: str, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)`` with clear errors.

    Args:
        name: timm model name, optionally with a pretrained tag (``"resnet18.a1_in1k"``) or a
            source prefix (``"hf-hub:..."``).
        argument: Name of the caller's argument, used in error messages.
        pretrained: Load timm's pretrained weights.
        kwargs: Further ``create_model`` arguments (``checkpoint_path``, ``in_chans``, ...).
    """
    if ":" not in name and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(f"{argument}={name!r} is not a timm model.{hint} See timm.list_models().")
    checkpoint_path = kwargs.get("checkpoint_path")
    if checkpoint_path is not None:
        if pretrained:
            raise ConfigError(
                f"{argument}: pass either pretrained=True (download timm's weights) or "
                "checkpoint_path= (a local file), not both"
            )
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"{argument}: checkpoint_path {checkpoint_path!r} is not a file")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except OSError as error:
        # Hub/URL download failures (no network, HF_HUB_OFFLINE=1) surface as OSError subclasses.
        if not pretrained:
            raise
        raise RuntimeError(
            f"{argument}={name!r}: could not fetch timm's pretrained weights "
            f"({type(error).__name__}: {error}). Without network access, download the weights "
            "elsewhere and load the local file instead of pretrained=True: checkpoint_path= for "
            "rgb_model, phase_kwargs={'checkpoint_path': ...} for phase_model (a state_dict of "
            f"timm.create_model({name!r}, num_classes=0))."
        ) from error
    except (RuntimeError, pickle.UnpicklingError) as error:
        code = describe_unsafe_pickle(error, checkpoint_path) if checkpoint_path is not None else None
        if code is not None:
            raise WeightsFileError(
                f"{argument}: checkpoint_path {checkpoint_path!r} holds pickled code ({code}), not plain weights: it "
                "was not loaded. Save the weights as a state_dict (torch.save(model.state_dict(), path)) or "
                "safetensors", option="model.checkpoint_path") from None
        if checkpoint_path is None or "state_dict" not in str(error):
            raise
        raise WeightsFileError(
            f"{argument}={name!r}: checkpoint_path {checkpoint_path!r} does not match the model. It "
            f"must hold the state_dict of timm.create_model({name!r}, num_classes=0) with the same "
            "keyword arguments (no classifier head). For a checkpoint that has a classifier head, "
            "pass pretrained=True with pretrained_cfg_overlay={'file': path} in the model's kwargs, "
            "which drops the head.", option="model.checkpoint_path"
        ) from error


def _pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # timm models: pooled pre-logits features whatever their head; other modules: their output.
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


def _reject_keys(kwargs: dict[str, Any], argument: str, keys: tuple[str, ...]) -> None:
    clash = sorted(set(kwargs) & set(keys))
    if clash:
        raise ValueError(
            f"{argument} must not set {clash}: PhasePriorBackbone sets them itself (use its own "
            "pretrained/checkpoint_path/phase_pretrained arguments)"
        )


def _channel_vector(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _num_features(model: nn.Module, argument: str) -> int:
    num_features = getattr(model, "num_features", None)
    if not isinstance(num_features, int):
        raise ValueError(
            f"{argument} must have an integer num_features attribute (the width of its pooled "
            f"output), got {type(model).__name__} without one"
        )
    return num_features


class PhasePriorBackbone(nn.Module):
    """RGB encoder + phase-prior encoder, fused into one embedding by self-attention.

    ``I_rgb = Linear(rgb_model(normalise(x)))``, ``I_pha = Linear(phase_model(normalise(phase_only(x))))``,
    ``Z = LayerNorm([I_rgb; I_pha])`` (B×T×e), ``Z' = Z + MHSA(Z)``, ``I_f = mean_t Z'``.

    It keeps timm's contract: ``num_features == embed_dim``, ``forward_features(x)`` returns the
    fused tokens Z' (B×T×e), ``forward_head(z)`` pools them to I_f (B×e), and
    ``forward(x) = forward_head(forward_features(x))``.

    Args:
        rgb_model: timm model name (``"resnet50"``, ``"vit_base_patch16_clip_224.openai"``,
            ``"small_cnn"``, ...) or a module with a ``num_features`` attribute that returns pooled
            features B×num_features (timm models are pooled through ``forward_head(..., pre_logits=True)``).
        phase_model: timm model name for the phase encoder (built with ``in_chans=1``), a module
            taking B×1×H×W phase images, or None to drop the phase prior (tokens = [I_rgb]).
        embed_dim: Width e of the projected and fused features (the CLIP text width, 512 for ViT-B).
        pretrained: Load timm's pretrained weights for the RGB model (needs network access).
        checkpoint_path: Local weights for the RGB model: the state_dict of
            ``timm.create_model(rgb_model, num_classes=0, **rgb_kwargs)``.
        phase_pretrained: Load timm's pretrained weights for the phase model (timm adapts the first
            convolution to one input channel).
        phase_amplitude: Constant amplitude R of the phase-only image; None scales R with the image
            size (see :func:`~tpsnet_plugin.backbones.phase.phase_only`).
        num_heads: Heads of the fusion self-attention; must divide ``embed_dim``.
        mean: Per-channel mean to normalise RGB inputs; None takes the timm model's
            ``pretrained_cfg`` mean, else ImageNet's.
        std: Per-channel std for RGB inputs; None as for ``mean``.
        phase_mean: Mean to normalise the phase-only image (values in [0, 1]).
        phase_std: Std to normalise the phase-only image.
        rgb_kwargs: Extra ``timm.create_model`` arguments for the RGB model (e.g. ``img_size``).
        phase_kwargs: Extra ``timm.create_model`` arguments for the phase model (e.g. ``img_size``,
            ``checkpoint_path``).
        fusion: Apply the self-attention fusion; False keeps Z' = Z (the "no fusion" ablation).
    """

    def __init__(
        self,
        rgb_model: str | nn.Module,
        phase_model: str | nn.Module | None = "resnet18",
        embed_dim: int = 512,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        phase_pretrained: bool = False,
        phase_amplitude: float | None = None,
        num_heads: int = 8,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        phase_mean: float = 0.5,
        phase_std: float = 0.5,
        rgb_kwargs: dict[str, Any] | None = None,
        phase_kwargs: dict[str, Any] | None = None,
        fusion: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        rgb_kwargs = dict(rgb_kwargs or {})
        phase_kwargs = dict(phase_kwargs or {})
        _reject_keys(rgb_kwargs, "rgb_kwargs", ("num_classes", "pretrained", "checkpoint_path"))
        _reject_keys(phase_kwargs, "phase_kwargs", ("num_classes", "pretrained", "in_chans"))

        if isinstance(rgb_model, str):
            self.rgb_model = _create_timm_model(
                rgb_model, "rgb_model", pretrained, {**rgb_kwargs, "checkpoint_path": checkpoint_path}
            )
        else:
            if pretrained or checkpoint_path is not None or rgb_kwargs:
                raise ValueError(
                    "pretrained, checkpoint_path and rgb_kwargs apply only when rgb_model is a timm "
                    "name; load weights into the module before passing it"
                )
            self.rgb_model = rgb_model
        self.rgb_proj = nn.Linear(_num_features(self.rgb_model, "rgb_model"), embed_dim)

        if isinstance(phase_model, str):
            self.phase_model = _create_timm_model(
                phase_model, "phase_model", phase_pretrained, {**phase_kwargs, "in_chans": 1}
            )
        elif phase_model is not None and (phase_pretrained or phase_kwargs):
            raise ValueError(
                "phase_pretrained and phase_kwargs apply only when phase_model is a timm name"
            )
        else:
            self.phase_model = phase_model
        self.phase_proj = (
            nn.Linear(_num_features(self.phase_model, "phase_model"), embed_dim)
            if self.phase_model is not None
            else None
        )

        cfg = getattr(self.rgb_model, "pretrained_cfg", None) or {}
        mean = mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN)
        std = std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD)
        # Buffers so they follow .to(device); not persistent: they are configuration, not weights.
        self.register_buffer("rgb_mean", _channel_vector(mean), persistent=False)
        self.register_buffer("rgb_std", _channel_vector(std), persistent=False)
        self.phase_mean = phase_mean
        self.phase_std = phase_std
        self.phase_amplitude = phase_amplitude
        self._compiled_phase_encoder = None  # set by compile_phase_branch

        self.embed_dim = self.num_features = embed_dim
        self.norm = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True) if fusion else None
        if self.attn is not None:
            # Start the residual fusion as the identity (ReZero-style): a randomly initialised
            # attention scrambles the tokens of a from-scratch backbone; training grows the mixing.
            nn.init.zeros_(self.attn.out_proj.weight)

    def _check_images(self, x: torch.Tensor) -> None:
        channels = self.rgb_mean.shape[1]
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"expected images B×{channels}×H×W in [0, 1], got shape {tuple(x.shape)}; repeat "
                f"grayscale images with x.expand(-1, {channels}, -1, -1)"
            )

    def forward_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Run both branches and the fusion, returning every intermediate.

        Args:
            x: Images B×3×H×W, float in [0, 1], not normalised.

        Returns:
            Dict with ``rgb`` (I_rgb, B×e), ``phase`` (I_pha, B×e, or None without a phase model),
            ``tokens`` (Z', B×T×e) and ``fused`` (I_f, B×e).
        """
        self._check_images(x)
        rgb = self.rgb_branch(x)
        phase = self.phase_branch(x) if self.phase_model is not None else None
        tokens = [rgb] if phase is None else [rgb, phase]
        z = self.norm(torch.stack(tokens, dim=1))
        if self.attn is not None:
            z = z + self.attn(z, z, z, need_weights=False)[0]
        return {"rgb": rgb, "phase": phase, "tokens": z, "fused": self.forward_head(z)}

    def rgb_features(self, x: torch.Tensor) -> torch.Tensor:
        """The RGB network's own pooled features (B×num_features) for images in [0, 1], before any new head."""
        return _pooled_features(self.rgb_model, (x - self.rgb_mean) / self.rgb_std)

    def rgb_branch(self, x: torch.Tensor) -> torch.Tensor:
        """I_rgb (B×e): the RGB network's pooled features, projected, for images in [0, 1]."""
        return self.rgb_proj(self.rgb_features(x))

    def phase_branch(self, x: torch.Tensor) -> torch.Tensor:
        """I_pha (B×e): the phase network's pooled features of the phase-only image, projected."""
        phase_image = phase_only(x, self.phase_amplitude).to(x.dtype)
        encode = self._compiled_phase_encoder or self._phase_encoder
        return encode(phase_image)

    def compile_phase_branch(self, **compile_kwargs: Any) -> None:
        """Run the phase network and its projection through ``torch.compile``.

        The phase network is small and launch-bound on a GPU: its many short kernels cost more
        host time than compute. Compiling fuses them (and with ``mode="reduce-overhead"`` replays
        them as CUDA graphs). The phase-only image (an FFT, complex numbers, which inductor does
        not generate code for) stays eager. Parameters, buffers and the ``state_dict`` are
        unchanged (no ``_orig_mod.`` prefix), so checkpoints of compiled and eager models are
        interchangeable.

        Args:
            **compile_kwargs: ``torch.compile`` arguments (``mode``, ``backend``, ``dynamic``,
                ``fullgraph``, ...).
        """
        if self.phase_model is None:
            raise ValueError("this backbone has no phase model (phase_model=None): nothing to compile")
        self._compiled_phase_encoder = torch.compile(self._phase_encoder, **compile_kwargs)

    @property
    def phase_branch_compiled(self) -> bool:
        """Whether :meth:`compile_phase_branch` was called."""
        return self._compiled_phase_encoder is not None

    def _phase_encoder(self, phase_image: torch.Tensor) -> torch.Tensor:
        phase_image = (phase_image - self.phase_mean) / self.phase_std
        return self.phase_proj(_pooled_features(self.phase_model, phase_image))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused tokens Z' (B×T×e; T = 2 with the phase prior, 1 without) for images in [0, 1]."""
        return self.forward_parts(x)["tokens"]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over tokens, I_f (B×e).

        Args:
            x: Tokens Z' from :meth:`forward_features`.
            pre_logits: Accepted for timm compatibility; there is no classifier, so it changes nothing.
        """
        return x.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused feature I_f (B×e) for images B×3×H×W in [0, 1]."""
        return self.forward_head(self.forward_features(x))

