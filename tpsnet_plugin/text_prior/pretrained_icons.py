"""Packaged icon-corpus CLIP weights, registered as open_clip's pretrained tag ``"icons"``.

``scripts/pretrain_clip.py`` trains the weights offline on the icon corpus
(``scripts/build_icons.py``); they ship in ``text_prior/weights`` as fp16 safetensors. Importing
this module (``import tpsnet_plugin`` does) adds an ``"icons"`` entry to open_clip's pretrained
registry for each model in :data:`ICONS_WEIGHTS`, so both of these load them offline::

    open_clip.create_model_and_transforms("tpsnet-tiny-clip", pretrained="icons")
    DomainPromptLearner("tpsnet-tiny-clip", pretrained="icons")

The registry entry's ``file`` is checked when open_clip reads it: a missing file or one whose
sha256 differs from the registered value raises :class:`IconsWeightsError` naming the fix,
instead of open_clip's silent random model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import open_clip
from open_clip import pretrained as _open_clip_pretrained

__all__ = ["ICONS_TAG", "ICONS_WEIGHTS", "IconsWeightsError", "icons_weights_path", "WEIGHTS_DIR"]

ICONS_TAG = "icons"
WEIGHTS_DIR = Path(__file__).parent / "weights"

# model name -> (file in WEIGHTS_DIR, sha256 of the file)
ICONS_WEIGHTS: dict[str, tuple[str, str]] = {
    "tpsnet-tiny-clip": ("tpsnet-tiny-clip-icons.safetensors",
                         "315f117034ea24e476d06acdae0288bdde10a1098e35e708e95d3f49ee591d16"),
}

_FIX = ("reinstall the package (pip install --force-reinstall tpsnet-plugin, or `git checkout -- "
        "tpsnet_plugin/text_prior/weights` in a checkout), or retrain the weights with "
        "scripts/pretrain_clip.py and pass the file's path as pretrained=")


class IconsWeightsError(RuntimeError):
    """The packaged ``icons`` weights are missing, damaged, or do not exist for the model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def icons_weights_path(model: str) -> str:
    """Path of the packaged ``icons`` weights of ``model``, after checking the file's sha256.

    Raises:
        IconsWeightsError: ``model`` has no ``icons`` weights, or the file is missing or damaged.
    """
    if model not in ICONS_WEIGHTS:
        raise IconsWeightsError(
            f"pretrained='{ICONS_TAG}' exists only for {sorted(ICONS_WEIGHTS)}, not for '{model}': "
            f"use one of those model names, or pass a checkpoint file of '{model}' as pretrained=")
    filename, expected = ICONS_WEIGHTS[model]
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        raise IconsWeightsError(f"the '{ICONS_TAG}' weights of '{model}' are missing ({path}): {_FIX}")
    actual = _sha256(path)
    if actual != expected:
        raise IconsWeightsError(
            f"the '{ICONS_TAG}' weights of '{model}' are damaged: {path} has sha256 {actual[:12]}..., "
            f"expected {expected[:12]}...: {_FIX}")
    return str(path)


class _CheckedFileCfg(dict):
    """An open_clip pretrained cfg whose ``file`` entry is verified when open_clip reads it."""

    def __init__(self, model: str, **cfg):
        super().__init__(cfg, file=str(WEIGHTS_DIR / ICONS_WEIGHTS[model][0]))
        self._model = model

    def __getitem__(self, key):
        if key == "file":
            return icons_weights_path(self._model)
        return super().__getitem__(key)

    def __deepcopy__(self, memo):
        return _CheckedFileCfg(self._model, **{k: v for k, v in dict.items(self) if k != "file"})


def register() -> None:
    """Add the ``icons`` tag of every model in :data:`ICONS_WEIGHTS` to open_clip's registry."""
    for model in ICONS_WEIGHTS:
        if model not in open_clip.list_models():
            continue
        _open_clip_pretrained._PRETRAINED.setdefault(model, {})[ICONS_TAG] = _CheckedFileCfg(
            model, **_open_clip_pretrained._pcfg())


register()
