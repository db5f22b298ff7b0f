import torch

from tpsnet_plugin.training import BatchAugment


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
    per_image = [torch.allclose(o, i, atol=1e-5) or torch.allclose(o, f, atol=1e-5) for o, i, f in zip(out, images, flipped)]
    assert all(per_image)
    assert any(torch.allclose(o, f, atol=1e-5) and not torch.allclose(o, i) for o, i, f in zip(out, images, flipped))
