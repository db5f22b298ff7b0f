import pytest
import torch

from tpsnet_plugin.training import BatchAugment
from tpsnet_plugin.training.augment import amplitude_mix


def test_identity_settings_return_the_input():
    images = torch.rand(4, 3, 16, 16)
    augment = BatchAugment(crop_scale=(1.0, 1.0), rotation=0, translate=0, brightness=0, contrast=0)
    assert torch.allclose(augment(images), images, atol=1e-5)


def test_views_differ_stay_in_range_and_are_seeded():
    images = torch.rand(8, 3, 16, 16)
    augment = BatchAugment(hflip=True, grayscale_p=0.5)
    first = augment(images, generator=torch.Generator().manual_seed(0))
    again = augment(images, generator=torch.Generator().manual_seed(0))
    other = augment(images, generator=torch.Generator().manual_seed(1))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_pure_horizontal_flip_matches_torch_flip():
    images = torch.rand(64, 1, 8, 8)
    augment = BatchAugment(crop_scale=(1.0, 1.0), rotation=0, translate=0, hflip=True, brightness=0, contrast=0)
    out = augment(images)
    flipped = images.flip(-1)
    per_image = [torch.allclose(o, i, atol=1e-5) or torch.allclose(o, f, atol=1e-5)
                 for o, i, f in zip(out, images, flipped)]
    assert all(per_image)
    assert any(torch.allclose(o, f, atol=1e-5) and not torch.allclose(o, i) for o, i, f in zip(out, images, flipped))


def _loop_dilate(image: torch.Tensor) -> torch.Tensor:
    # Brute-force 3x3 grey-level dilation with the border ignored (max over in-image neighbours).
    channels, height, width = image.shape
    out = torch.empty_like(image)
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                out[c, y, x] = image[c, max(0, y - 1):y + 2, max(0, x - 1):x + 2].max()
    return out


def test_morphology_dilates_or_erodes_each_image_against_a_loop_reference():
    images = torch.rand(48, 1, 6, 6)
    augment = BatchAugment(crop_scale=(1.0, 1.0), rotation=0, translate=0, brightness=0, contrast=0, morphology_p=1.0)
    out = augment(images, generator=torch.Generator().manual_seed(0))
    kinds = []
    for o, image in zip(out, images):
        if torch.allclose(o, _loop_dilate(image), atol=1e-5):
            kinds.append("dilate")
        elif torch.allclose(o, -_loop_dilate(-image), atol=1e-5):
            kinds.append("erode")
        else:
            kinds.append("other")
    assert "other" not in kinds
    assert 10 < kinds.count("dilate") < 38  # half and half, p = 1


def test_morphology_probability_is_validated():
    with pytest.raises(ValueError, match="morphology_p"):
        BatchAugment(morphology_p=1.5)


def test_elastic_distortion_moves_pixels_smoothly_and_is_seeded():
    images = torch.zeros(4, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0  # a vertical stroke
    augment = BatchAugment(crop_scale=(1.0, 1.0), rotation=0, translate=0, brightness=0, contrast=0,
                           elastic_alpha=12.0, elastic_sigma=4.0)
    first = augment(images, generator=torch.Generator().manual_seed(0))
    again = augment(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    assert not torch.allclose(first, images, atol=1e-3)
    # a warp only moves ink: the amount stays close and no pixel leaves [0, 1]
    assert first.min() >= 0 and first.max() <= 1
    assert torch.allclose(first.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)), rtol=0.25)
    # the displacement field is smooth: neighbouring pixels move by nearly the same amount
    field = augment._elastic_displacement(images, torch.Generator().manual_seed(1)) * 14  # in pixels
    assert field.abs().max() > 0.5
    assert (field[:, 1:] - field[:, :-1]).abs().max() < 0.5 * field.abs().max()


def test_elastic_arguments_are_validated():
    with pytest.raises(ValueError, match="elastic"):
        BatchAugment(elastic_alpha=-1.0)
    with pytest.raises(ValueError, match="elastic"):
        BatchAugment(elastic_sigma=0.0)


def test_saturation_and_inversion():
    from tpsnet_plugin.training import BatchAugment

    gray = torch.rand(4, 1, 8, 8).expand(-1, 3, -1, -1).contiguous()
    still = dict(crop_scale=(1.0, 1.0), rotation=0.0, translate=0.0, brightness=0.0, contrast=0.0)
    # saturation jitter leaves grey images grey; inversion with p=1 maps x to 1 - x
    out = BatchAugment(**still, saturation=0.5)(gray, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, gray, atol=1e-5, rtol=0)
    torch.testing.assert_close(BatchAugment(**still, invert_p=1.0)(gray), 1 - gray, atol=1e-5, rtol=0)
    colour = torch.rand(4, 3, 8, 8)
    desaturated = BatchAugment(**still, saturation=1.0)(colour, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(desaturated, colour)


def _dft2(image: torch.Tensor) -> torch.Tensor:
    # Brute-force 2-D DFT of an H×W image as two matrix products with the DFT matrices.
    height, width = image.shape

    def matrix(n):
        k = torch.arange(n, dtype=torch.float64)
        return torch.exp(-2j * torch.pi * torch.outer(k, k) / n)

    return matrix(height) @ image.to(torch.complex128) @ matrix(width)


def test_amplitude_mix_takes_the_partners_amplitude_and_keeps_the_phase():
    images = torch.rand(4, 3, 6, 5, dtype=torch.float64)
    partner = torch.tensor([2, 3, 0, 1])
    weight = torch.tensor([0.0, 0.25, 1.0, 0.5], dtype=torch.float64)
    out = amplitude_mix(images, partner, weight)
    assert out.dtype == images.dtype and out.shape == images.shape
    for i in range(4):
        for c in range(3):
            mine, theirs, mixed = (_dft2(images[i, c]), _dft2(images[partner[i], c]), _dft2(out[i, c]))
            expected = (1 - weight[i]) * mine.abs() + weight[i] * theirs.abs()
            # the inverse FFT's real part is the whole result: the mixed spectrum is Hermitian
            assert torch.allclose(mixed.abs(), expected, atol=1e-9)
            kept = expected > 1e-6
            assert torch.allclose(torch.polar(torch.ones_like(mixed.abs()), mixed.angle())[kept],
                                  torch.polar(torch.ones_like(mine.abs()), mine.angle())[kept], atol=1e-9)
    assert torch.allclose(out[0], images[0], atol=1e-12)


def test_amplitude_mix_option_is_seeded_off_by_default_and_validated():
    images = torch.rand(8, 3, 12, 12)
    still = dict(crop_scale=(1.0, 1.0), rotation=0, translate=0, brightness=0, contrast=0)
    assert torch.allclose(BatchAugment(**still)(images), images, atol=1e-5)
    augment = BatchAugment(**still, amplitude_mix_p=1.0)
    first = augment(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, augment(images, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(first, images, atol=1e-3) and first.min() >= 0 and first.max() <= 1
    for bad in ({"amplitude_mix_p": 1.5}, {"amplitude_mix_ratio": 0.0}, {"amplitude_mix_ratio": 2.0}):
        with pytest.raises(ValueError, match="amplitude_mix"):
            BatchAugment(**bad)
