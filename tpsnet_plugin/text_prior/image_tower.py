"""Start a timm RGB backbone from a CLIP's image tower (the paper's initialisation).

Two kinds of open_clip image towers are supported:

* a timm tower (``vision_cfg.timm_model_name``, e.g. ``tpsnet-cnn-clip``'s ``small_cnn``): the
  trunk's state dict loads into a timm model of the same name, and the tower's linear projection
  becomes the backbone's RGB projection;
* open_clip's own ViT (``ViT-B-16`` ...): converted with timm's OpenAI-CLIP checkpoint filter into
  the matching timm ViT (``vit_base_patch16_clip_224`` for ``ViT-B-16``); its ``proj`` becomes the
  RGB projection.

The backbone also takes the CLIP's input normalisation (mean, std), so at the start ``I_rgb`` is
the CLIP's own image embedding.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from ..errors import ConfigError, TPSNetError
from .domain_prompt_learner import clip_preprocess_cfg

__all__ = ["ImageTowerMismatchError", "clip_config_image_size", "clip_normalisation", "init_backbone_from_clip"]

_OPTION = "model.rgb_from_clip"


class ImageTowerMismatchError(TPSNetError, ValueError):
    """The CLIP image tower cannot initialise the RGB backbone (other architecture, width or image size)."""


def clip_config_image_size(model_name: str) -> int:
    """The image side an open_clip architecture is built for, read from its config (without building it)."""
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ConfigError(f"Unknown open_clip model '{model_name}': open_clip.list_models() lists every name")
    size = config["vision_cfg"].get("image_size", 224)
    return int(size if isinstance(size, int) else size[0])


def clip_normalisation(model_name: str, pretrained: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input (mean, std) of an open_clip model, from its config and its pretrained tag, without building it.

    A model rebuilt to load trained weights (``retrieve``) needs the normalisation the CLIP tower gave it.
    """
    from open_clip.transform import PreprocessCfg

    cfg = PreprocessCfg()
    mean, std = cfg.mean, cfg.std
    overlay = dict((open_clip.get_model_config(model_name) or {}).get("preprocess_cfg", {}))
    if pretrained and pretrained.lower() in [t.lower() for t in open_clip.list_pretrained_tags_by_model(model_name)]:
        overlay.update({k: v for k, v in open_clip.get_pretrained_cfg(model_name, pretrained).items()
                        if k in ("mean", "std")})
    return tuple(overlay.get("mean", mean)), tuple(overlay.get("std", std))


def _timm_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return cfg.get("architecture", type(model).__name__)


def _tower_state(visual: nn.Module, rgb_model: nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The trunk's state dict in the timm model's key space, and the projection (e×features) or None."""
    if isinstance(visual, TimmModel):
        trunk, tower_name = visual.trunk.state_dict(), _timm_name(visual.trunk)
        if tower_name != _timm_name(rgb_model):
            raise ImageTowerMismatchError(
                f"{_OPTION}: the CLIP image tower is the timm model '{tower_name}', the RGB backbone is "
                f"'{_timm_name(rgb_model)}': set model.rgb_backbone={tower_name} (same architecture, same weights)")
        proj = getattr(visual.head, "proj", None)
        if proj is not None and proj.bias is not None:
            raise ImageTowerMismatchError(f"{_OPTION}: a tower projection with a bias is not supported")
        return trunk, None if proj is None else proj.weight.detach()
    if isinstance(visual, VisionTransformer):
        from timm.models.vision_transformer import VisionTransformer as TimmViT
        from timm.models.vision_transformer import checkpoint_filter_fn

        if not isinstance(rgb_model, TimmViT):
            raise ImageTowerMismatchError(
                f"{_OPTION}: the CLIP image tower is a ViT, the RGB backbone '{_timm_name(rgb_model)}' is not: set "
                "model.rgb_backbone to the timm ViT of the same shape (e.g. vit_base_patch16_clip_quickgelu_224 "
                "for OpenAI's ViT-B-16)")

        state = {f"visual.{key}": value for key, value in visual.state_dict().items()}
        converted = checkpoint_filter_fn(state, rgb_model)
        projection = converted.pop("head.weight", None)
        converted.pop("head.bias", None)
        return converted, projection
    raise ImageTowerMismatchError(
        f"{_OPTION}: the CLIP image tower {type(visual).__name__} is not supported: use an open_clip model with a "
        "timm image tower (e.g. tpsnet-cnn-clip) or open_clip's ViT (e.g. ViT-B-16 with "
        "model.rgb_backbone=vit_base_patch16_clip_224)")


def init_backbone_from_clip(backbone: nn.Module, clip: nn.Module, image_size: int | None = None) -> None:
    """Copy a CLIP image tower into a :class:`~tpsnet_plugin.backbones.PhasePriorBackbone`'s RGB branch.

    The RGB network gets the tower's weights (strictly: every key, every shape), the RGB projection
    gets the tower's projection, and the RGB input normalisation becomes the CLIP's.

    Args:
        backbone: A ``PhasePriorBackbone`` whose ``rgb_model`` is the timm counterpart of the tower.
        clip: An open_clip CLIP model (its ``visual`` tower is read, not changed).
        image_size: Side of the training images. A ViT tower needs exactly its own size (its position
            embedding is tied to it); a CNN tower takes any size.

    Raises:
        ImageTowerMismatchError: Another architecture, another width, another embedding width, or a ViT
            tower with another image size; the message names the option to change.
    """
    visual = clip.visual
    cfg = clip_preprocess_cfg(clip)
    size = cfg["size"]
    is_vit = isinstance(visual, VisionTransformer) or "vit" in _timm_name(getattr(visual, "trunk", visual)).lower()
    if is_vit and image_size is not None and (image_size, image_size) != tuple(size):
        raise ImageTowerMismatchError(
            f"{_OPTION}: the CLIP's ViT image tower takes {size[0]}x{size[1]} images, the data is resized to "
            f"{image_size}x{image_size}: set data.image_size={size[0]}")
    state, projection = _tower_state(visual, backbone.rgb_model)
    try:
        backbone.rgb_model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ImageTowerMismatchError(
            f"{_OPTION}: the CLIP image tower's weights do not fit "
            f"model.rgb_backbone='{_timm_name(backbone.rgb_model)}' with model.rgb_kwargs as given (same "
            f"architecture, same widths needed): {error}") from None
    if projection is not None:
        if tuple(projection.shape) != tuple(backbone.rgb_proj.weight.shape):
            raise ImageTowerMismatchError(
                f"{_OPTION}: the CLIP image projection is {tuple(projection.shape)}, the RGB projection "
                f"{tuple(backbone.rgb_proj.weight.shape)}: the embedding width must be the CLIP's "
                f"({projection.shape[0]})")
        with torch.no_grad():
            backbone.rgb_proj.weight.copy_(projection)
            if backbone.rgb_proj.bias is not None:
                backbone.rgb_proj.bias.zero_()
    with torch.no_grad():
        backbone.rgb_mean.copy_(torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        backbone.rgb_std.copy_(torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1))
    if projection is not None:
        _check_same_function(backbone, clip, size)


def _check_same_function(backbone: nn.Module, clip: nn.Module, size: tuple[int, int]) -> None:
    # Weights that load strictly can still sit in a network that computes something else (QuickGELU
    # vs GELU, another pooling): compare the two on random images instead of trusting the keys.
    generator = torch.Generator().manual_seed(0)
    device = backbone.rgb_mean.device
    images = torch.rand(2, 3, *size, generator=generator).to(device)
    modes = backbone.training, clip.training
    backbone.eval()
    clip.eval()
    try:
        with torch.no_grad():
            ours = backbone.rgb_proj(backbone.rgb_features(images)).float()
            theirs = clip.encode_image((images - backbone.rgb_mean) / backbone.rgb_std).float()
    finally:
        backbone.train(modes[0])
        clip.train(modes[1])
    error = (ours - theirs).norm() / theirs.norm().clamp_min(1e-12)
    if not error < 1e-3:
        raise ImageTowerMismatchError(
            f"{_OPTION}: the CLIP image tower's weights load into "
            f"model.rgb_backbone='{_timm_name(backbone.rgb_model)}' but the two compute different features "
            f"(relative difference {float(error):.3g}): use the timm model that matches the tower exactly "
            "(activation, pooling). OpenAI's ViT-B/16 uses QuickGELU: "
            "model.rgb_backbone=vit_base_patch16_clip_quickgelu_224, and with a local weights file "
            "model.clip_model=ViT-B-16-quickgelu")
