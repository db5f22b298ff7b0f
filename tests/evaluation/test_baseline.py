import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401
from tpsnet_plugin.evaluation import baseline, raw_pixel_features


def brute_force_features(images):
    """Loop reference in float64: per pixel the channel mean, flattened, then unit length."""
    images = np.asarray(images, dtype=np.float64)
    rows = []
    for image in images:
        gray = [sum(image[c, y, x] for c in range(image.shape[0])) / image.shape[0]
                for y in range(image.shape[1]) for x in range(image.shape[2])]
        norm = np.sqrt(sum(v * v for v in gray))
        rows.append([v / norm for v in gray])
    return np.array(rows)


def uint8_images(seed, n=5, channels=3, size=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size + 1), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_the_brute_force_loop_for_uint8_and_float_images(channels):
    images = uint8_images(channels, channels=channels)
    expected = brute_force_features(images.numpy())
    for given in (images, images.float() / 255, images.numpy()):
        features = raw_pixel_features(given)
        assert features.dtype == torch.float32 and features.shape == (5, 4 * 5)
        np.testing.assert_allclose(features.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_without_normalisation_the_gray_values_lie_in_0_1():
    images = uint8_images(1)
    gray = images.double().mean(1).flatten(1) / 255
    torch.testing.assert_close(raw_pixel_features(images, normalize=False).double(), gray)
    floats = images.float() / 255
    torch.testing.assert_close(raw_pixel_features(floats, normalize=False),
                               floats.mean(1).flatten(1))


def test_chunks_give_the_whole_batch_result(monkeypatch):
    images = uint8_images(2, n=10)
    whole = raw_pixel_features(images)
    # the formula the trainer's baseline used, bit for bit
    assert torch.equal(whole, F.normalize(images.float().mean(1).flatten(1), dim=-1))
    monkeypatch.setattr(baseline, "_CHUNK", 3)
    assert torch.equal(raw_pixel_features(images), whole)
    assert raw_pixel_features(images[:0]).shape == (0, 20)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="N x C x H x W"):
        raw_pixel_features(torch.zeros(2, 4, 4, dtype=torch.uint8))


def test_max_size_pools_large_images_and_keeps_small_ones():
    import torch
    import torch.nn.functional as F

    from tpsnet_plugin.evaluation import raw_pixel_features

    large = torch.randint(0, 256, (3, 3, 64, 48), dtype=torch.uint8)
    gray = large.float().mean(1, keepdim=True)
    expected = F.normalize(F.interpolate(gray, size=(32, 32), mode="area").flatten(1), dim=1)
    torch.testing.assert_close(raw_pixel_features(large, max_size=32), expected)
    small = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(raw_pixel_features(small, max_size=32), raw_pixel_features(small))
    assert raw_pixel_features(large[:0], max_size=32).shape == (0, 32 * 32)
