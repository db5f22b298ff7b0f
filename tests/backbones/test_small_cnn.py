"""Tests for the small_cnn timm model."""

import pytest
import torch

import tpsnet_plugin.backbones  # noqa: F401  (registers small_cnn)

# isort: split
import timm

from tpsnet_plugin.backbones import SmallCNN


def test_created_by_name_without_head():
    model = timm.create_model("small_cnn", num_classes=0)
    assert isinstance(model, SmallCNN)
    assert model.num_features == 256 and model.num_classes == 0
    images = torch.rand(2, 3, 28, 28)
    feature_map = model.forward_features(images)
    assert feature_map.shape == (2, 256, 3, 3)  # 28 -> 14 -> 7 -> 3
    pooled = model(images)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))
    assert model.pretrained_cfg["architecture"] == "small_cnn"


def test_head_and_reset_classifier():
    model = timm.create_model("small_cnn", num_classes=10, in_chans=1, widths=(8, 16, 32))
    images = torch.rand(2, 1, 32, 32)
    features = model.forward_features(images)
    assert features.shape == (2, 32, 8, 8)  # three stages, two pools
    assert model(images).shape == (2, 10)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, 32)
    fc = model.get_classifier()
    torch.testing.assert_close(model(images), pre_logits @ fc.weight.T + fc.bias)
    model.reset_classifier(4)
    assert model.num_classes == 4 and model(images).shape == (2, 4)
    model.reset_classifier(0)
    assert model(images).shape == (2, 32)


def test_features_only():
    model = timm.create_model("small_cnn", features_only=True, out_indices=(0, 3))
    outputs = model(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(1, 32, 32, 32), (1, 256, 4, 4)]
    assert model.feature_info.reduction() == [1, 8]


def test_pretrained_raises_clear_error():
    with pytest.raises(ValueError, match="checkpoint_path"):
        timm.create_model("small_cnn", pretrained=True)


def test_checkpoint_path_round_trip(tmp_path):
    source = timm.create_model("small_cnn", num_classes=0, widths=(8, 16))
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    path = tmp_path / "small_cnn.pth"
    torch.save(source.state_dict(), path)
    loaded = timm.create_model("small_cnn", num_classes=0, widths=(8, 16), checkpoint_path=str(path))
    for (name, expected), (_, actual) in zip(source.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(actual, expected, msg=name)
