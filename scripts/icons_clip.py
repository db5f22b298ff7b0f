"""Helpers shared by the icon-corpus CLIP pretraining and its evaluation.

Images are handled as uint8 tensors (N x 3 x H x W) and turned into model input the way
:meth:`DomainPromptLearner.encode_images` does (antialiased resize to the model's image size,
clamp, CLIP mean/std), so that features measured here are the features the text prior sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tpsnet_plugin.data.icons import TEMPLATES
from tpsnet_plugin.text_prior.domain_prompt_learner import encode_clip_images

__all__ = [
    "load_images",
    "encode_images",
    "encode_captions",
    "zero_shot_accuracy",
    "cross_theme_knn",
]


def load_images(paths: Sequence[str | os.PathLike], size: int | None = None) -> torch.Tensor:
    """RGB images as a uint8 tensor N x 3 x H x W (all images must share one size unless
    ``size`` is given, in which case each is resized to ``size`` x ``size``)."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(image))
    if not arrays:
        return torch.empty(0, 3, size or 0, size or 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image features of uint8 images (N x 3 x H x W)."""
    device = next(model.parameters()).device
    features = [F.normalize(encode_clip_images(model, chunk.to(device).float() / 255.0, batch_size), dim=-1)
                for chunk in images.split(batch_size)]
    return torch.cat(features) if features else torch.empty(0)


@torch.no_grad()
def encode_captions(model: torch.nn.Module, tokenizer, captions: Sequence[str],
                    templates: Sequence[str] = TEMPLATES, batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised text features of ``captions``, averaged over ``templates`` (prompt
    ensembling, as in CLIP's zero-shot evaluation)."""
    device = next(model.parameters()).device
    total = None
    for template in templates:
        texts = [template.format(caption) for caption in captions]
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start:start + batch_size]).to(device)
            parts.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
        features = torch.cat(parts)
        total = features if total is None else total + features
    return F.normalize(total, dim=-1)


def zero_shot_accuracy(image_features: torch.Tensor, image_captions: Sequence[str],
                       text_features: torch.Tensor, candidates: Sequence[str],
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->name and name->image top-k accuracy (fractions) with chance levels.

    image->name: each image ranks the candidate captions; a hit when its own caption is among
    the top k. name->image: each candidate caption ranks the images; a hit when one of the top k
    images has that caption. Chance: k / len(candidates) for image->name; for name->image the
    probability that k random images include one with the caption, averaged over captions.
    """
    index = {caption: i for i, caption in enumerate(candidates)}
    labels = torch.tensor([index[caption] for caption in image_captions])
    similarity = image_features @ text_features.T  # N images x C captions
    result: dict[str, float] = {}
    n_images, n_captions = similarity.shape
    counts = torch.bincount(labels, minlength=n_captions).double()
    for k in ks:
        top = similarity.topk(min(k, n_captions), dim=1).indices
        result[f"image_to_name_top{k}"] = float((top == labels[:, None]).any(1).double().mean())
        result[f"image_to_name_chance_top{k}"] = min(k, n_captions) / n_captions
        top_images = similarity.T.topk(min(k, n_images), dim=1).indices  # C x k
        hits = (labels[top_images] == torch.arange(n_captions)[:, None]).any(1)
        present = counts > 0
        result[f"name_to_image_top{k}"] = float(hits[present].double().mean())
        # P(at least one of k random draws without replacement has the caption)
        miss = torch.ones(n_captions, dtype=torch.float64)
        for j in range(min(k, n_images)):
            miss = miss * (n_images - counts - j).clamp(min=0) / (n_images - j)
        result[f"name_to_image_chance_top{k}"] = float((1 - miss)[present].mean())
    result["images"] = n_images
    result["candidates"] = n_captions
    return result


def cross_theme_knn(query_features: torch.Tensor, query_names: Sequence[frozenset],
                    gallery_features: torch.Tensor, gallery_names: Sequence[frozenset]) -> dict[str, float]:
    """Top-1 cross-theme retrieval by cosine similarity: a hit when the nearest gallery item
    shares an icon name with the query (items are distinct drawings, each with the set of names
    that alias it). Chance: the mean share of gallery items sharing a name with the query."""
    q = F.normalize(query_features.float(), dim=-1)
    g = F.normalize(gallery_features.float(), dim=-1)
    nearest = (q @ g.T).argmax(dim=1).tolist()
    hits = [bool(query_names[i] & gallery_names[j]) for i, j in enumerate(nearest)]
    chance = [sum(bool(names & other) for other in gallery_names) / len(gallery_names)
              for names in query_names]
    return {"top1": float(np.mean(hits)), "chance_top1": float(np.mean(chance)),
            "queries": len(query_names), "gallery": len(gallery_names)}
