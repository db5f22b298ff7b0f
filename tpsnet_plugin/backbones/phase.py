"""Phase-only images: the Fourier phase of an image with its amplitude replaced by a constant.

The phase keeps shapes and edges while the amplitude carries most of a domain's style (colour,
texture, contrast), so the phase-only image is a domain-robust view of the input.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

__all__ = ["phase_only"]

# ITU-R BT.601 luma weights (the ones PIL's ``convert("L")`` uses).
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def phase_only(images: torch.Tensor, amplitude: float | None = None) -> torch.Tensor:
    """Phase-only images of a batch, computed with ``torch.fft`` on the input's device.

    Grayscale → FFT2 → keep the phase, set every amplitude to ``amplitude`` → inverse FFT2 → real
    part → clamp to [0, 255] → divide by 255. The phase does not change when the input is scaled by
    a positive constant, so images may be given in any positive scale ([0, 1], [0, 255], ...).

    Half and bfloat16 inputs are computed in float32 (FFTs in half precision are inaccurate and only
    supported for power-of-two sizes on CUDA); float64 inputs are computed in float64. The output is
    float32 in every case.

    Args:
        images: Batch B×C×H×W with C = 3 (RGB, converted to grayscale with ITU-R 601 weights) or
            C = 1 (used as is).
        amplitude: The constant amplitude R. None uses ``50000 * sqrt(H * W) / 224``: R = 50000 at
            224×224, as in earlier phase-based retrieval work, scaled so that the pixel standard
            deviation of the result (R / sqrt(H·W) ≈ 223) does not change with the image size.

    Returns:
        Float32 tensor B×1×H×W with values in [0, 1], on the input's device.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"phase_only expects images of shape B×C×H×W with C = 1 or 3, got {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) or select the channels first"
        )
    if not images.is_floating_point():
        raise TypeError(f"phase_only expects floating-point images, got {images.dtype}; use images.float()")
    height, width = images.shape[-2:]
    if amplitude is None:
        amplitude = 50000.0 * math.sqrt(height * width) / 224.0
    elif not amplitude > 0:
        raise ValueError(f"amplitude must be positive, got {amplitude}")
    compute_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    images = images.to(compute_dtype)
    # Under autocast the grayscale einsum would run in bf16/fp16, and CUDA FFTs reject bfloat16.
    device_type = images.device.type
    no_autocast = (torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type)
                   else nullcontext())
    with no_autocast:
        if images.shape[1] == 3:
            weights = torch.tensor(_GRAY_WEIGHTS, dtype=compute_dtype, device=images.device)
            gray = torch.einsum("bchw,c->bhw", images, weights)
        else:
            gray = images[:, 0]
        phase = torch.angle(torch.fft.fft2(gray))
        constant = torch.full_like(phase, float(amplitude))
        restored = torch.fft.ifft2(torch.polar(constant, phase)).real
    return (restored.clamp(0.0, 255.0) / 255.0).unsqueeze(1).to(torch.float32)
