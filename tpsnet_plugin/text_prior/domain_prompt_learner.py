"""Learnable CoOp-style domain prompts on a frozen open_clip model (the TPSNet text prior).

Each (domain d, cluster c) pair owns M learnable context vectors. The prompt
``"An image of a X X X X."`` is tokenized once; at every forward the token embeddings of the
``X`` placeholders are replaced by the context vectors of (d, c) and the sequence goes through
open_clip's own ``encode_text`` (positional embedding, causal mask, ``ln_final``, pooling at the
EOT token, text projection). CLIP itself is frozen: the context vectors are the only parameters
that train. Unlabelled clusters have no class name, so unlike CoOp no word follows the context.

Importing this module registers ``tpsnet-tiny-clip``, a small random-init open_clip architecture
for tests and CPU runs, the open_clip way (``open_clip.add_model_config``)::

    learner = DomainPromptLearner("ViT-B-16", pretrained="/path/to/open_clip_pytorch_model.bin",
                                  num_domains=2, num_clusters=65)
    image_features = learner.encode_images(images)   # N x e, frozen image tower
    text_features = learner()                         # D x C x e, differentiable w.r.t. context
"""

from __future__ import annotations

import difflib
import os
import pickle
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from safetensors import SafetensorError
from torch import nn

__all__ = ["CNN_CLIP_MODEL", "DomainPromptLearner", "TINY_CLIP_MODEL", "clip_embed_dim", "clip_preprocess_cfg",
           "create_frozen_clip", "encode_clip_images"]

TINY_CLIP_MODEL = "tpsnet-tiny-clip"
"""Name of the small open_clip architecture (ViT image tower) shipped in ``text_prior/model_configs``."""
CNN_CLIP_MODEL = "tpsnet-cnn-clip"
"""A small open_clip architecture whose image tower is the timm model ``small_cnn``: its weights can
start the RGB backbone of the same name (``model.rgb_from_clip``)."""

_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_MODEL_CONFIG_DIR)

from ..backbones import small_cnn as _small_cnn  # noqa: E402,F401  (timm name of the CNN CLIP towers)
from ..errors import ConfigError, WeightsDownloadError, WeightsFileError, describe_unsafe_pickle  # noqa: E402
from .packaged_weights import (  # noqa: E402  (registers the tags)
    PackagedWeightsError,
    is_packaged_tag,
    packaged_weights_path,
)

# Placeholder word of the context positions; CLIP's BPE lower-cases it to the single token "x</w>".
_PLACEHOLDER = "X"
_SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")


class DomainPromptLearner(nn.Module):
    """Per-domain, per-cluster learnable prompts for a frozen open_clip model.

    ``context`` (D×C×M×width) is the only parameter with ``requires_grad``; CLIP stays in eval
    mode even after ``.train()``. The state dict holds the frozen CLIP weights too: to keep only
    what the prompts stage learns, save ``learner.context`` or the text features ``learner()``.

    Args:
        clip_model: open_clip model name (see ``open_clip.list_models()``), e.g. ``"ViT-B-16"``, or
            :data:`TINY_CLIP_MODEL` for tests.
        pretrained: CLIP weights: an open_clip pretrained tag (e.g. ``"openai"``; needs network
            access or a filled cache), a local checkpoint file (e.g.
            ``"/path/to/open_clip_pytorch_model.bin"``), or None for random initialisation.
        num_domains: D, the number of image domains.
        num_clusters: C, the number of clusters (pseudo-classes) per domain.
        num_context: M, learnable context vectors per prompt.
        template: Fixed words placed before the context vectors.
        init_std: Standard deviation of the normal initialisation of the context vectors.
        cache_dir: Cache directory for open_clip downloads (weights and tokenizer files).
    """

    def __init__(
        self,
        clip_model: str = "ViT-B-16",
        pretrained: str | None = None,
        num_domains: int = 2,
        num_clusters: int = 65,
        num_context: int = 4,
        template: str = "An image of a",
        init_std: float = 0.02,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_domains", num_domains), ("num_clusters", num_clusters),
                            ("num_context", num_context)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.num_domains = num_domains
        self.num_clusters = num_clusters
        self.num_context = num_context
        self.template = template

        self.clip = create_frozen_clip(clip_model, pretrained, cache_dir)
        tower = _text_tower(self.clip)
        width = tower.token_embedding.embedding_dim
        self._embed_dim = _projection_dim(tower.text_projection, width)

        tokenizer = open_clip.get_tokenizer(clip_model, cache_dir=cache_dir)
        self.prompt = f"{template} {' '.join([_PLACEHOLDER] * num_context)}."
        tokens = tokenizer([self.prompt])[0]
        positions = _placeholder_positions(tokenizer, tokens, num_context, template)
        self.register_buffer("prompt_tokens", tokens, persistent=False)
        self.register_buffer("context_positions", positions, persistent=False)

        self.context = nn.Parameter(torch.empty(num_domains, num_clusters, num_context, width))
        nn.init.normal_(self.context, std=init_std)

        self._image_size = clip_preprocess_cfg(self.clip)["size"]

    @property
    def embed_dim(self) -> int:
        """e, the width of the text and image features."""
        return self._embed_dim

    @property
    def logit_scale(self) -> float:
        """CLIP's frozen ``exp(logit_scale)`` (100 for OpenAI CLIP, 1/0.07 at random init)."""
        return float(self.clip.logit_scale.detach().exp().reshape(-1)[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the image tower expects; :meth:`encode_images` resizes to it."""
        return self._image_size

    def train(self, mode: bool = True) -> DomainPromptLearner:
        """Set training mode for the learner while CLIP stays in eval mode (it is frozen).

        Args:
            mode: True for training mode, False for evaluation mode.
        """
        super().train(mode)
        self.clip.eval()
        return self

    def forward(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of the prompts, differentiable with respect to :attr:`context`.

        The features are not L2-normalised (as ``encode_text`` returns them); losses that
        use cosine similarity normalise them.

        Args:
            labels: Optional combined labels ``domain * C + cluster`` (shape (N,)). When given,
                only the prompts these labels name are encoded.

        Returns:
            D×C×e features when ``labels`` is None, else N×e features, row i for ``labels[i]``.
        """
        num_prompts = self.num_domains * self.num_clusters
        context = self.context.reshape(num_prompts, self.num_context, -1)
        if labels is None:
            return self._encode_context(context).reshape(self.num_domains, self.num_clusters, -1)
        labels = torch.as_tensor(labels, device=context.device).long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_prompts):
            raise ValueError(f"combined labels must lie in [0, {num_prompts}) for "
                             f"{self.num_domains} domains x {self.num_clusters} clusters")
        # Encode each distinct prompt once, then spread the features over the batch.
        unique, inverse = torch.unique(labels, return_inverse=True)
        return self._encode_context(context[unique])[inverse]

    def _encode_context(self, context: torch.Tensor) -> torch.Tensor:
        """Run ``clip.encode_text`` on the prompt with the placeholders replaced by ``context``.

        A forward hook on the token embedding swaps in the context vectors, so everything after
        the embedding lookup is open_clip's own code path, for ``CLIP`` and ``CustomTextCLIP``.
        """

        def inject(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, self.context_positions] = context.to(output.dtype)
            return output

        tokens = self.prompt_tokens.expand(context.shape[0], -1)
        handle = _text_tower(self.clip).token_embedding.register_forward_hook(inject)
        try:
            return self.clip.encode_text(tokens)
        finally:
            handle.remove()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Image features from the frozen CLIP image tower.

        Images are resized to :attr:`image_size` the way open_clip's eval transform does
        (shortest side, then centre crop; or a plain resize for ``resize_mode="squash"``) and
        normalised with CLIP's mean and std.

        Args:
            images: B×3×H×W (or B×1×H×W grayscale, repeated to RGB) floats in [0, 1], on any
                device.
            batch_size: Images per forward pass of the image tower.

        Returns:
            N×e features on the CLIP device, not L2-normalised.
        """
        return encode_clip_images(self.clip, images, batch_size)


def clip_preprocess_cfg(clip: nn.Module) -> dict:
    """open_clip's preprocessing config of a model, with ``size`` as (height, width)."""
    cfg = dict(open_clip.get_model_preprocess_cfg(clip))
    size = cfg["size"]
    cfg["size"] = (size, size) if isinstance(size, int) else tuple(size)
    return cfg


def clip_preprocess(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images as an open_clip model's input, the way its eval transform prepares them (differentiable).

    Resized to the model's image size (shortest side, then centre crop; or a plain resize for
    ``resize_mode="squash"``), clamped (bicubic overshoots; PIL-based transforms clip) and
    normalised with the model's mean and std.

    Args:
        clip: An open_clip model.
        images: B×3×H×W (or B×1×H×W grayscale, repeated to RGB) floats in [0, 1].

    Returns:
        B×3×h×w float32 tensor on the images' device.
    """
    cfg = clip_preprocess_cfg(clip)
    height, width = cfg["size"]
    interpolation = cfg.get("interpolation", "bicubic")
    mode = interpolation if interpolation in ("bicubic", "bilinear") else "bilinear"
    images = images.float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if cfg.get("resize_mode", "shortest") == "squash":
        size = (height, width)
    else:
        scale = max(height / images.shape[2], width / images.shape[3])
        size = (max(height, round(images.shape[2] * scale)), max(width, round(images.shape[3] * scale)))
    if size != tuple(images.shape[2:]):
        images = F.interpolate(images, size=size, mode=mode, antialias=True, align_corners=False)
    top, left = (images.shape[2] - height) // 2, (images.shape[3] - width) // 2
    images = images[:, :, top:top + height, left:left + width].clamp(0.0, 1.0)
    mean = torch.tensor(cfg["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def encode_clip_images(clip: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Image features of a frozen open_clip model, preprocessed by :func:`clip_preprocess`.

    Args:
        clip: An open_clip model.
        images: B×3×H×W (or B×1×H×W grayscale, repeated to RGB) floats in [0, 1], on any device.
        batch_size: Images per forward pass of the image tower.

    Returns:
        N×e features on the CLIP device, not L2-normalised.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError("images must be B x 3 x H x W (or B x 1 x H x W) floats in [0, 1], "
                         f"got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    parameter = next(clip.visual.parameters())
    device, dtype = parameter.device, parameter.dtype
    features = [clip.encode_image(clip_preprocess(clip, chunk.to(device)).to(dtype)).float()
                for chunk in images.split(batch_size)]
    if not features:
        return torch.empty(0, clip_embed_dim(clip), device=device)
    return torch.cat(features)


def clip_embed_dim(clip: nn.Module) -> int:
    """e, the width of an open_clip model's image and text embeddings."""
    tower = _text_tower(clip)
    return _projection_dim(tower.text_projection, tower.token_embedding.embedding_dim)


def create_frozen_clip(
    clip_model: str, pretrained: str | None = None, cache_dir: str | None = None
) -> nn.Module:
    """Build an open_clip model, frozen and in eval mode, with clear errors for unknown names and missing weights.

    Args:
        clip_model: open_clip model name.
        pretrained: A pretrained tag (open_clip's or one packaged here), a local checkpoint file, or None.
        cache_dir: Cache directory for open_clip downloads.
    """
    is_schema = clip_model.startswith(_SCHEMA_PREFIXES)
    if not is_schema:
        known = open_clip.list_models()
        if clip_model.replace("/", "-") not in known:
            close = difflib.get_close_matches(clip_model, known, n=5, cutoff=0.5)
            raise ConfigError(f"Unknown open_clip model '{clip_model}'. Close matches: {close}. "
                             "open_clip.list_models() lists every name.")
    if not is_schema and is_packaged_tag(pretrained) and not os.path.isfile(pretrained):
        try:
            pretrained = packaged_weights_path(clip_model, pretrained)  # checked; clear error if absent
        except PackagedWeightsError as error:
            error.option = "model.clip_pretrained"
            raise
    is_tag = bool(pretrained) and not is_schema and not os.path.isfile(pretrained)
    if is_tag:
        tags = open_clip.list_pretrained_tags_by_model(clip_model)
        if pretrained.lower() not in [tag.lower() for tag in tags]:
            raise ConfigError(f"pretrained='{pretrained}' is neither an existing file nor a known "
                             f"open_clip tag for '{clip_model}' (tags: {tags}). Pass a tag or the "
                             "path of a local checkpoint file.")
    try:
        clip, _, _ = open_clip.create_model_and_transforms(
            clip_model, pretrained=pretrained, cache_dir=cache_dir
        )
    except (pickle.UnpicklingError, SafetensorError, EOFError) as error:
        # a damaged, truncated or pickled-code file: never unpickled, named with the fix
        code = describe_unsafe_pickle(error, pretrained if pretrained and os.path.isfile(pretrained) else None)
        if code is not None:
            raise WeightsFileError(
                f"the CLIP weights file '{pretrained}' holds pickled code ({code}), not plain weights: it was not "
                "loaded. Pass a safetensors or weights-only state-dict file (model.clip_pretrained), or a "
                "pretrained tag", option="model.clip_pretrained") from None
        raise WeightsFileError(
            f"the CLIP weights file '{pretrained}' cannot be read as open_clip weights of '{clip_model}' "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}): it is damaged or not a weights-only "
            "checkpoint. Pass an intact safetensors or state-dict file (model.clip_pretrained), or a pretrained "
            "tag", option="model.clip_pretrained") from None
    except RuntimeError as error:
        if pretrained and not is_tag and ("state_dict" in str(error) or "size mismatch" in str(error)):
            raise WeightsFileError(
                f"the CLIP weights '{pretrained}' do not fit open_clip model '{clip_model}' (another architecture, "
                f"or not an open_clip state dict): pass the model name they were trained with (model.clip_model), "
                f"or weights of '{clip_model}' (model.clip_pretrained). First lines of the mismatch: "
                + " ".join(str(error).splitlines()[:3]), option="model.clip_pretrained") from None
        if not (is_tag and "download" in str(error).lower()):
            raise
        source = open_clip.get_pretrained_cfg(clip_model, pretrained)
        if source.get("hf_hub"):
            repo, filename = os.path.split(source["hf_hub"])
            filename = filename or "open_clip_pytorch_model.bin"  # open_clip's default name
            where = f"https://huggingface.co/{repo} (file {filename})"
        else:
            where = source.get("url", "the open_clip model hub")
        raise WeightsDownloadError(
            f"Could not fetch the '{pretrained}' weights of '{clip_model}' (no network access, or "
            f"HF_HUB_OFFLINE=1). On a machine with network access, download them from {where} and pass the "
            "file's path as the pretrained weights (model.clip_pretrained=/path/to/open_clip_pytorch_model.bin), "
            "or point cache_dir= (HF_HOME) at a cache that already holds them.", option="model.clip_pretrained"
        ) from error
    clip.requires_grad_(False)
    return clip.eval()


def _text_tower(clip: nn.Module) -> nn.Module:
    """The module holding ``token_embedding`` and ``text_projection`` for supported CLIP types."""
    if isinstance(clip, CLIP):
        return clip
    if isinstance(clip, CustomTextCLIP) and hasattr(clip.text, "token_embedding"):
        return clip.text
    raise TypeError(f"{type(clip).__name__} with text tower "
                    f"{type(getattr(clip, 'text', None)).__name__} is not supported: prompt "
                    "learning needs open_clip's own text transformer (CLIP or CustomTextCLIP "
                    "models without a Hugging Face text tower, e.g. ViT-B-16).")


def _projection_dim(projection: nn.Module | torch.Tensor | None, width: int) -> int:
    """Output width of open_clip's text projection (a matrix, a Linear, or none)."""
    if projection is None:
        return width
    if isinstance(projection, nn.Linear):
        return projection.out_features
    return projection.shape[-1]


def _placeholder_positions(
    tokenizer, tokens: torch.Tensor, num_context: int, template: str
) -> torch.Tensor:
    """Indices of the placeholder tokens in the tokenized prompt."""
    # The placeholder id is the one token that "X" adds to the empty string's special tokens.
    added = set(tokenizer([_PLACEHOLDER])[0].tolist()) - set(tokenizer([""])[0].tolist())
    if len(added) != 1:
        raise ValueError(f"the tokenizer splits the placeholder '{_PLACEHOLDER}' into "
                         f"{len(added)} tokens; prompt learning needs a single-token placeholder")
    positions = (tokens == added.pop()).nonzero().flatten()
    if len(positions) != num_context:
        raise ValueError(f"found {len(positions)} placeholder tokens in the tokenized prompt, "
                         f"expected num_context={num_context}: the template '{template}' must not "
                         f"contain the word '{_PLACEHOLDER}', and the prompt must fit the "
                         "tokenizer's context length")
    return positions
