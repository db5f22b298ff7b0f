"""Batched image augmentations on the model's device.

Per-image PIL/torchvision pipelines dominate the step time of small CPU models; one affine grid
and one ``grid_sample`` for the whole batch cost about as much as a single image does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BatchAugment(nn.Module):
    """Random resized crop, rotation, translation, flip and colour jitter for a whole batch.

    Args:
        crop_scale: Range of the kept area fraction of the random resized crop.
        rotation: Maximum absolute rotation in degrees.
        translate: Maximum absolute translation as a fraction of the image size.
        hflip: Whether to flip half of the images horizontally.
        brightness: Maximum relative brightness change.
        contrast: Maximum relative contrast change.
        saturation: Maximum relative saturation change (colour images).
        invert_p: Probability of inverting an image (1 - x): light-on-dark vs dark-on-light
            renderings of the same shape (digits, line art on textures).
        grayscale_p: Probability of replacing an image by its grayscale version.
        morphology_p: Probability of a 3×3 grey-level dilation or erosion (half each), which thickens
            or thins strokes: the main gap between handwriting and fonts. Meant for line drawings
            (digits, sketches); 0 turns it off.
        elastic_alpha: Strength of a random elastic distortion (Simard et al., 2003), in pixels:
            uniform noise in [-alpha, alpha] per pixel and axis, smoothed by a Gaussian of
            ``elastic_sigma`` pixels, is added to the sampling grid. Handwriting varies this way;
            0 turns it off.
        elastic_sigma: Smoothing of the elastic displacement field, in pixels.
        amplitude_mix_p: Probability of mixing a view's Fourier amplitude spectrum with that of
            another image of the batch (per channel, phase kept): the view takes on another
            image's, often another domain's, colour and texture statistics while its shapes stay
            (amplitude mix, Xu et al., "A Fourier-based Framework for Domain Generalization",
            CVPR 2021). Meant for domains that differ in texture or background; 0 turns it off.
        amplitude_mix_ratio: Upper end of the mixing weight λ ~ U(0, ratio) given to the other
            image's amplitude.
    """

    def __init__(
        self,
        crop_scale: Sequence[float] = (0.6, 1.0),
        rotation: float = 15.0,
        translate: float = 0.1,
        hflip: bool = False,
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.0,
        invert_p: float = 0.0,
        grayscale_p: float = 0.0,
        morphology_p: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
        amplitude_mix_p: float = 0.0,
        amplitude_mix_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.crop_scale = (float(low), float(high))
        self.rotation = float(rotation)
        self.translate = float(translate)
        self.hflip = bool(hflip)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        if not 0 <= invert_p <= 1:
            raise ValueError(f"invert_p is a probability in [0, 1], got {invert_p}")
        self.invert_p = float(invert_p)
        self.grayscale_p = float(grayscale_p)
        if not 0 <= morphology_p <= 1:
            raise ValueError(f"morphology_p is a probability in [0, 1], got {morphology_p}")
        self.morphology_p = float(morphology_p)
        if elastic_alpha < 0 or not elastic_sigma > 0:
            raise ValueError(f"elastic_alpha must be >= 0 and elastic_sigma > 0, "
                             f"got {elastic_alpha} and {elastic_sigma}")
        self.elastic_alpha = float(elastic_alpha)
        self.elastic_sigma = float(elastic_sigma)
        if not 0 <= amplitude_mix_p <= 1 or not 0 < amplitude_mix_ratio <= 1:
            raise ValueError(f"amplitude_mix_p must be in [0, 1] and amplitude_mix_ratio in (0, 1], "
                             f"got {amplitude_mix_p} and {amplitude_mix_ratio}")
        self.amplitude_mix_p = float(amplitude_mix_p)
        self.amplitude_mix_ratio = float(amplitude_mix_ratio)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` (B×C×H×W floats in [0, 1]); returns a new tensor of the same shape."""
        batch, device = images.shape[0], images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(batch, device=device, generator=generator) * (high - low) + low

        # Zoom by 1/sqrt(area): sampling a smaller window of the input is a crop resized back.
        zoom = uniform(*self.crop_scale).sqrt()
        angle = uniform(-self.rotation, self.rotation) * (math.pi / 180)
        flip = torch.ones(batch, device=device)
        if self.hflip:
            flip = torch.where(uniform(0, 1) < 0.5, -flip, flip)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        shift = 2 * self.translate
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, uniform(-shift, shift)], dim=1),
                torch.stack([sin * flip, cos, uniform(-shift, shift)], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        if self.elastic_alpha > 0:
            grid = grid + self._elastic_displacement(images, generator)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        if self.brightness > 0:
            out = out * uniform(1 - self.brightness, 1 + self.brightness).view(-1, 1, 1, 1)
        if self.contrast > 0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * uniform(1 - self.contrast, 1 + self.contrast).view(-1, 1, 1, 1) + mean
        # Drawn only when switched on, so existing recipes keep their random streams.
        if self.saturation > 0 and out.shape[1] == 3:
            gray = out.mean(dim=1, keepdim=True)
            out = (out - gray) * uniform(1 - self.saturation, 1 + self.saturation).view(-1, 1, 1, 1) + gray
        if self.invert_p > 0:
            out = torch.where((uniform(0, 1) < self.invert_p).view(-1, 1, 1, 1), 1 - out.clamp(0, 1), out)
        if self.grayscale_p > 0 and out.shape[1] == 3:
            gray = out.mean(dim=1, keepdim=True).expand_as(out)
            pick = (uniform(0, 1) < self.grayscale_p).view(-1, 1, 1, 1)
            out = torch.where(pick, gray, out)
        if self.morphology_p > 0:
            dilated = F.max_pool2d(out, 3, stride=1, padding=1)
            eroded = -F.max_pool2d(-out, 3, stride=1, padding=1)
            pick = uniform(0, 1).view(-1, 1, 1, 1)
            out = torch.where(pick < self.morphology_p / 2, dilated, torch.where(pick < self.morphology_p, eroded, out))
        if self.amplitude_mix_p > 0:
            weight = uniform(0, self.amplitude_mix_ratio) * (uniform(0, 1) < self.amplitude_mix_p)
            partner = torch.randperm(batch, device=device, generator=generator)
            out = amplitude_mix(out.clamp(0, 1), partner, weight)
        return out.clamp(0, 1)

    def _elastic_displacement(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Smooth random displacement B×H×W×2 in grid units (2 / size per pixel)."""
        batch, _, height, width = images.shape
        radius = max(1, round(3 * self.elastic_sigma))
        offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * self.elastic_sigma**2))
        kernel = kernel / kernel.sum()
        noise = torch.rand(batch, 2, height, width, device=images.device, generator=generator).to(images.dtype) * 2 - 1
        # separable Gaussian blur of the x and y fields (replicate padding works for any size)
        row_kernel = kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1)
        column_kernel = kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1)
        noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="replicate"), row_kernel, groups=2)
        noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="replicate"), column_kernel, groups=2)
        scale = torch.tensor([2.0 / width, 2.0 / height], device=images.device, dtype=images.dtype)
        return noise.permute(0, 2, 3, 1) * self.elastic_alpha * scale


def amplitude_mix(images: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Images whose Fourier amplitude is mixed with their partners', phase kept.

    Args:
        images: B×C×H×W real images.
        partner: B indices into the batch: image ``i`` takes amplitude from ``images[partner[i]]``.
        weight: B mixing weights λ in [0, 1]: amplitude ``(1 - λ) |F(x_i)| + λ |F(x_partner)|``
            per channel; λ = 0 returns the image unchanged (up to FFT rounding).

    Returns:
        The mixed images, B×C×H×W, in the input's dtype (computed in float32 at least).
    """
    compute = torch.promote_types(images.dtype, torch.float32)
    spectrum = torch.fft.fft2(images.to(compute))
    amplitude, phase = spectrum.abs(), spectrum.angle()
    weight = weight.to(compute).view(-1, 1, 1, 1)
    mixed = (1 - weight) * amplitude + weight * amplitude[partner]
    return torch.fft.ifft2(torch.polar(mixed, phase)).real.to(images.dtype)
