"""Float32 similarity matrices for the losses, safe under float16/bfloat16 autocast."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance


def similarity_matrix(
    distance: BaseDistance, query: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    """``distance(query, ref)`` in float32, oriented so that larger means more similar.

    Autocast would run the matmul inside the distance in half precision, where scaled logits
    (scale 100 or temperature 0.05) lose most of their digits; it is switched off here.

    Args:
        distance: A pml distance (e.g. ``CosineSimilarity``).
        query: Query embeddings, shape (N, e).
        ref: Reference embeddings, shape (K, e).

    Returns:
        Float32 tensor of shape (N, K); distances (not inverted) are negated.
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        mat = distance(query.float(), ref.float())
    return mat if distance.is_inverted else -mat
