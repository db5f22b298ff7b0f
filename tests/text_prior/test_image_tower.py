"""Starting the RGB backbone from a CLIP image tower (model.rgb_from_clip)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import tpsnet_plugin  # noqa: E402,F401

# isort: split
import open_clip  # noqa: E402

from tpsnet_plugin.backbones import PhasePriorBackbone  # noqa: E402
from tpsnet_plugin.text_prior import CNN_CLIP_MODEL, TINY_CLIP_MODEL  # noqa: E402
from tpsnet_plugin.text_prior.image_tower import (  # noqa: E402
    ImageTowerMismatchError,
    clip_normalisation,
    init_backbone_from_clip,
)

# timm's counterpart of the tiny CLIP's ViT tower (tpsnet-tiny-clip.json: 32 px, patch 8, width 64, 2 layers)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _clip(name, seed=0):
    torch.manual_seed(seed)
    return open_clip.create_model(name).eval()


def _normalised(clip, images):
    mean, std = clip_normalisation(CNN_CLIP_MODEL)
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_cnn_tower_start_gives_the_clip_image_embedding():
    clip = _clip(CNN_CLIP_MODEL)
    torch.manual_seed(1)
    backbone = PhasePriorBackbone("small_cnn", None, embed_dim=64, num_heads=4).eval()
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        before = backbone.rgb_branch(images)
        init_backbone_from_clip(backbone, clip, image_size=32)
        after = backbone.rgb_branch(images)
        expected = clip.encode_image(_normalised(clip, images))
    assert not torch.allclose(before, expected, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    # the CLIP is read, not changed
    torch.testing.assert_close(clip.encode_image(_normalised(clip, images)), expected)


def test_vit_tower_start_gives_the_clip_image_embedding():
    clip = _clip(TINY_CLIP_MODEL)
    backbone = PhasePriorBackbone("vit_base_patch16_clip_224", None, embed_dim=64, num_heads=4,
                                  rgb_kwargs=TINY_VIT).eval()
    init_backbone_from_clip(backbone, clip, image_size=32)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.rgb_branch(images), clip.encode_image(_normalised(clip, images)),
                                   atol=1e-4, rtol=1e-4)


def test_vit_tower_refuses_another_image_size():
    backbone = PhasePriorBackbone("vit_base_patch16_clip_224", None, embed_dim=64, num_heads=4, rgb_kwargs=TINY_VIT)
    with pytest.raises(ImageTowerMismatchError, match="takes 32x32 images.*data.image_size=32"):
        init_backbone_from_clip(backbone, _clip(TINY_CLIP_MODEL), image_size=28)


def test_other_architecture_or_width_is_a_clear_error():
    clip = _clip(CNN_CLIP_MODEL)
    with pytest.raises(ImageTowerMismatchError, match="model.rgb_backbone=small_cnn"):
        init_backbone_from_clip(PhasePriorBackbone("resnet18", None, embed_dim=64, num_heads=4), clip)
    narrow = PhasePriorBackbone("small_cnn", None, embed_dim=64, num_heads=4, rgb_kwargs={"widths": [8, 16, 16, 32]})
    with pytest.raises(ImageTowerMismatchError, match="same widths"):
        init_backbone_from_clip(narrow, clip)
    with pytest.raises(ImageTowerMismatchError, match="is a ViT.*model.rgb_backbone"):
        init_backbone_from_clip(PhasePriorBackbone("small_cnn", None, embed_dim=64, num_heads=4),
                                _clip(TINY_CLIP_MODEL), image_size=32)
    wide = PhasePriorBackbone("small_cnn", None, embed_dim=128, num_heads=4)
    with pytest.raises(ImageTowerMismatchError, match="embedding width must be the CLIP's"):
        init_backbone_from_clip(wide, clip)


def test_normalisation_is_read_from_the_config_and_the_tag():
    mean, std = clip_normalisation("ViT-B-16", "openai")
    assert mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN) and std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert clip_normalisation(CNN_CLIP_MODEL) == clip_normalisation(CNN_CLIP_MODEL, "not-a-tag")


def test_config_image_size_without_building_the_model():
    from tpsnet_plugin.text_prior.image_tower import clip_config_image_size

    assert clip_config_image_size(CNN_CLIP_MODEL) == 32 and clip_config_image_size("ViT-B-16") == 224
    with pytest.raises(ValueError, match="Unknown open_clip model"):
        clip_config_image_size("no-such-clip")


def test_a_tower_that_loads_but_computes_something_else_is_refused():
    # same keys and shapes, another activation: strict loading passes, the features differ
    backbone = PhasePriorBackbone("vit_base_patch16_clip_224", None, embed_dim=64, num_heads=4,
                                  rgb_kwargs={**TINY_VIT, "act_layer": "quick_gelu"})
    with pytest.raises(ImageTowerMismatchError, match="compute different features"):
        init_backbone_from_clip(backbone, _clip(TINY_CLIP_MODEL), image_size=32)


@pytest.mark.slow
def test_paper_setting_openai_vit_b16_tower_starts_timms_quickgelu_vit():
    # the paper configs: open_clip ViT-B-16 (OpenAI weights are QuickGELU) -> timm vit_base_patch16_clip_quickgelu_224
    backbone = PhasePriorBackbone("vit_base_patch16_clip_quickgelu_224", None, embed_dim=512, num_heads=8)
    init_backbone_from_clip(backbone, _clip("ViT-B-16-quickgelu"), image_size=224)  # checks the features itself
    with pytest.raises(ImageTowerMismatchError, match="QuickGELU"):
        init_backbone_from_clip(backbone, _clip("ViT-B-16"), image_size=224)  # GELU tower: same keys, other function
