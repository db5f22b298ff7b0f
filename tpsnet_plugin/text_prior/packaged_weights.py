"""CLIP weights shipped in the package, registered as open_clip pretrained tags.

``scripts/pretrain_clip.py`` trains them offline (no pretrained weights can be downloaded where
this project is built); they ship in ``text_prior/weights`` as fp16 safetensors. Importing this
module (``import tpsnet_plugin`` does) adds every entry of :data:`PACKAGED_WEIGHTS` to open_clip's
pretrained registry, so these load offline::

    open_clip.create_model_and_transforms("tpsnet-tiny-clip", pretrained="icons")
    open_clip.create_model_and_transforms("tpsnet-cnn-clip", pretrained="artwork")
    DomainPromptLearner("tpsnet-cnn-clip", pretrained="digits_disjoint")

Tags:

* ``tpsnet-tiny-clip`` / ``icons``: a ViT image tower trained on the icon corpus's training themes.
* ``tpsnet-cnn-clip`` / ``digits_disjoint``: a ``small_cnn`` image tower (so the same weights can
  start a timm RGB backbone) trained on the icon corpus's training themes and the Digits domains
  ``printed``, ``handwriting-fonts`` and ``handwritten-uci`` captioned by their class names; the
  pair ``handwritten-mnist-half`` ↔ ``mnist-m`` is never seen.
* ``tpsnet-cnn-clip`` / ``artwork``: the same architecture trained on the icon corpus's training
  themes plus Debian's openclipart and Tux Paint stamp artwork; the held-out icon themes
  (tango, gnome) are never seen.

The registry entry's ``file`` is checked when open_clip reads it: a missing file or one whose
sha256 differs from the registered value raises :class:`PackagedWeightsError` naming the fix,
instead of open_clip's silent random model.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
from open_clip import pretrained as _open_clip_pretrained

from ..errors import TPSNetError
from ..utils.io import file_sha256

__all__ = ["PACKAGED_WEIGHTS", "PackagedWeightsError", "WEIGHTS_DIR", "is_packaged_tag", "packaged_tags",
           "packaged_weights_path"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

# model name -> tag -> (file in WEIGHTS_DIR, sha256 of the file)
PACKAGED_WEIGHTS: dict[str, dict[str, tuple[str, str]]] = {
    "tpsnet-tiny-clip": {
        "icons": ("tpsnet-tiny-clip-icons.safetensors",
                  "315f117034ea24e476d06acdae0288bdde10a1098e35e708e95d3f49ee591d16"),
    },
    "tpsnet-cnn-clip": {
        "digits_disjoint": ("tpsnet-cnn-clip-digits_disjoint.safetensors",
                            "399458e141f0eb6d0fa63ddf9fa38dc1ceb9e07c045e55cca4a6c2f8fd15da41"),
        "artwork": ("tpsnet-cnn-clip-artwork.safetensors",
                    "c1d3317f9429a09e1d14f157301816cd8f27893668ba8335ab8df508bb8cb629"),
    },
}

_FIX = ("reinstall the package (pip install --force-reinstall tpsnet-plugin, or `git checkout -- "
        "tpsnet_plugin/text_prior/weights` in a checkout), or retrain the weights with "
        "scripts/pretrain_clip.py and pass the file's path as pretrained=")


class PackagedWeightsError(TPSNetError, RuntimeError):
    """Packaged weights are missing, damaged, or do not exist for the model and tag."""


def packaged_tags(model: str) -> list[str]:
    """The packaged pretrained tags of ``model`` (empty when it has none)."""
    return sorted(PACKAGED_WEIGHTS.get(model, {}))


def packaged_weights_path(model: str, tag: str) -> str:
    """Path of the packaged ``tag`` weights of ``model``, after checking the file's sha256.

    Raises:
        PackagedWeightsError: ``model`` has no packaged ``tag`` weights, or the file is missing or
            damaged.
    """
    tag = tag.lower()
    if tag not in PACKAGED_WEIGHTS.get(model, {}):
        having = sorted(name for name, tags in PACKAGED_WEIGHTS.items() if tag in tags)
        raise PackagedWeightsError(
            f"pretrained='{tag}' exists only for {having}, not for '{model}' (its packaged tags: "
            f"{packaged_tags(model)}): use one of those model names, or pass a checkpoint file of "
            f"'{model}' as pretrained=")
    filename, expected = PACKAGED_WEIGHTS[model][tag]
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        raise PackagedWeightsError(f"the '{tag}' weights of '{model}' are missing ({path}): {_FIX}")
    actual = file_sha256(path)
    if actual != expected:
        raise PackagedWeightsError(
            f"the '{tag}' weights of '{model}' are damaged: {path} has sha256 {actual[:12]}..., "
            f"expected {expected[:12]}...: {_FIX}")
    return str(path)


def is_packaged_tag(tag: str | None) -> bool:
    """Whether ``tag`` names packaged weights of some model (of another model: a clear error follows)."""
    if not tag:
        return False
    return any(tag.lower() in tags for tags in PACKAGED_WEIGHTS.values())


class _CheckedFileCfg(dict):
    """An open_clip pretrained cfg whose ``file`` entry is verified when open_clip reads it."""

    def __init__(self, model: str, tag: str, **cfg):
        super().__init__(cfg, file=str(WEIGHTS_DIR / PACKAGED_WEIGHTS[model][tag][0]))
        self._model, self._tag = model, tag

    def __getitem__(self, key):
        if key == "file":
            return packaged_weights_path(self._model, self._tag)
        return super().__getitem__(key)

    def __deepcopy__(self, memo):
        return _CheckedFileCfg(self._model, self._tag, **{k: v for k, v in dict.items(self) if k != "file"})


def register() -> None:
    """Add every packaged (model, tag) of :data:`PACKAGED_WEIGHTS` to open_clip's registry."""
    for model, tags in PACKAGED_WEIGHTS.items():
        if model not in open_clip.list_models():
            continue
        for tag in tags:
            _open_clip_pretrained._PRETRAINED.setdefault(model, {})[tag] = _CheckedFileCfg(
                model, tag, **_open_clip_pretrained._pcfg())


register()
