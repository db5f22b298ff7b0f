"""Tests for phase_only against a numpy reference and its invariances."""

import math

import numpy as np
import pytest
import torch

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.backbones import phase_only


def numpy_phase_only(images: np.ndarray, amplitude: float | None = None) -> np.ndarray:
    """Reference: the same pipeline with np.fft, one image at a time, in float64."""
    batch, channels, height, width = images.shape
    if amplitude is None:
        amplitude = 50000.0 * math.sqrt(height * width) / 224.0
    out = np.empty((batch, 1, height, width))
    for b in range(batch):
        if channels == 3:
            gray = 0.299 * images[b, 0] + 0.587 * images[b, 1] + 0.114 * images[b, 2]
        else:
            gray = images[b, 0]
        phase = np.angle(np.fft.fft2(gray))
        restored = np.real(np.fft.ifft2(amplitude * np.exp(1j * phase)))
        out[b, 0] = np.clip(restored, 0, 255) / 255
    return out


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("amplitude", [None, 3000.0])
def test_matches_numpy_reference(channels, amplitude):
    generator = torch.Generator().manual_seed(channels)
    images = torch.rand(3, channels, 12, 10, generator=generator, dtype=torch.float64)
    result = phase_only(images, amplitude)
    assert result.shape == (3, 1, 12, 10)
    assert result.dtype == torch.float32
    expected = numpy_phase_only(images.numpy(), amplitude)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6)
    # float32 input is computed in float32: same result within float32 FFT error
    np.testing.assert_allclose(phase_only(images.float(), amplitude).numpy(), expected, atol=1e-4)
    # the clamp is active (some values at 0 and some strictly inside), so the test exercises it
    assert (result == 0).any() and ((result > 0) & (result < 1)).any()


def test_invariant_to_positive_scaling():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = phase_only(images)
    for scale in (255.0, 0.01):
        torch.testing.assert_close(phase_only(images * scale), reference, atol=1e-5, rtol=0)


def test_invariant_to_real_positive_fourier_gain():
    """Filtering with a real, positive, symmetric per-frequency gain changes the amplitude only."""
    gray = torch.rand(2, 1, 16, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fy = torch.fft.fftfreq(16, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(12, dtype=torch.float64)[None, :]
    gain = 0.2 + torch.exp(-(fy**2 + fx**2) * 20.0)  # gain(k) = gain(-k) > 0, so the output stays real
    spectrum = torch.fft.fft2(gray) * gain
    filtered = torch.fft.ifft2(spectrum)
    assert filtered.imag.abs().max() < 1e-12
    filtered = filtered.real
    assert not torch.allclose(filtered, gray, atol=1e-2)  # the filter really changed the image
    torch.testing.assert_close(phase_only(filtered), phase_only(gray), atol=1e-5, rtol=0)


def test_not_invariant_to_a_phase_change():
    images = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    flipped = images.flip(-1)  # mirroring changes the phase
    assert not torch.allclose(phase_only(images), phase_only(flipped), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)).to(dtype)
    result = phase_only(images)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, phase_only(images.float()), atol=0, rtol=0)


def test_output_on_input_device():
    for device in ["meta"] + (["cuda"] if torch.cuda.is_available() else []):
        images = torch.rand(2, 3, 8, 8).to(device)
        result = phase_only(images)
        assert result.device == images.device
        assert result.shape == (2, 1, 8, 8) and result.dtype == torch.float32


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        phase_only(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="B×C×H×W"):
        phase_only(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        phase_only(torch.rand(1, 1, 8, 8), amplitude=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        phase_only(torch.ones(1, 1, 8, 8, dtype=torch.uint8))


def test_autocast_does_not_lower_the_fft_precision(monkeypatch):
    # Under bf16 autocast the grayscale einsum would run in bfloat16, which CUDA FFTs reject
    # ("Unsupported dtype BFloat16", seen on an H200); the FFT must always get float32.
    seen = []
    fft2 = torch.fft.fft2

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return fft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "fft2", spy)
    images = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = phase_only(images)
    assert seen == [torch.float32]
    assert out.dtype == torch.float32
    assert torch.allclose(out, phase_only(images))
