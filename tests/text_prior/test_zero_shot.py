"""The CLIP zero-shot starting point: class probabilities from prompt-ensembled class names."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tpsnet_plugin  # noqa: E402,F401

# isort: split
import open_clip  # noqa: E402

from tpsnet_plugin.data.icons import TEMPLATES  # noqa: E402
from tpsnet_plugin.text_prior import CNN_CLIP_MODEL  # noqa: E402
from tpsnet_plugin.text_prior.zero_shot import zero_shot_probabilities, zero_shot_templates  # noqa: E402


def test_probabilities_match_a_direct_computation():
    torch.manual_seed(0)
    clip = open_clip.create_model(CNN_CLIP_MODEL).eval()
    tokenizer = open_clip.get_tokenizer(CNN_CLIP_MODEL)
    names = ["cat", "teapot", "alarm clock"]
    image_features = torch.randn(7, 64)
    probabilities = zero_shot_probabilities(clip, CNN_CLIP_MODEL, image_features, names, templates=TEMPLATES[:3])
    with torch.no_grad():
        text = torch.stack([
            F.normalize(F.normalize(clip.encode_text(tokenizer([t.format(n) for t in TEMPLATES[:3]])), dim=-1).mean(0),
                        dim=0) for n in names])
    logits = clip.logit_scale.exp() * F.normalize(image_features, dim=-1) @ text.T
    torch.testing.assert_close(probabilities, logits.softmax(-1), atol=1e-5, rtol=1e-5)
    assert probabilities.shape == (7, 3)


def test_templates_follow_the_weights():
    assert zero_shot_templates("icons") == TEMPLATES
    assert zero_shot_templates("digits_disjoint") == TEMPLATES
    assert zero_shot_templates("openai") != TEMPLATES and len(zero_shot_templates(None)) > 0


@pytest.mark.parametrize("names", [None, [], ["cat", "cat"], ["cat", " "]])
def test_missing_or_bad_class_names_are_refused(names):
    clip = open_clip.create_model(CNN_CLIP_MODEL).eval()
    with pytest.raises(ValueError, match="class names"):
        zero_shot_probabilities(clip, CNN_CLIP_MODEL, torch.randn(2, 64), names)
