"""Export pretrained CLIP weights as the fp16 safetensors file the package ships, and print its sha256.

The file goes to ``tpsnet_plugin/text_prior/weights/<model>-<tag>.safetensors``; register it in
``PACKAGED_WEIGHTS`` (``tpsnet_plugin/text_prior/packaged_weights.py``) with the printed sha256::

    python -m scripts.export_clip_weights --weights runs/digits_clip/model.safetensors \\
        --model tpsnet-cnn-clip --tag digits_disjoint

Only safetensors files are read (nothing is unpickled). User errors (a missing, damaged or
truncated file, weights of another model) print one line ``export_clip_weights: error: ...`` and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tpsnet_plugin  # noqa: F401  (registers the model configs)

# isort: split
import open_clip

from tpsnet_plugin.text_prior.packaged_weights import WEIGHTS_DIR
from tpsnet_plugin.utils.io import file_sha256

_FIX = "pass the model.safetensors that scripts/pretrain_clip.py wrote (copy it again if it was cut short)"


class ExportError(ValueError):
    """Weights that cannot be exported; the message names the file and the fix."""


def export(weights: Path, model: str, tag: str, out_dir: Path = WEIGHTS_DIR) -> tuple[Path, str]:
    """Check the weights fit ``model``, write them as fp16 and return (path, sha256).

    Raises:
        ExportError: ``weights`` is missing, damaged or not a safetensors file, or holds the
            weights of another model.
    """
    if not Path(weights).is_file():
        raise ExportError(f"{weights} does not exist: {_FIX}")
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), "pt") as handle:
            trained_as = (handle.metadata() or {}).get("model")
    except Exception as error:  # safetensors reports damaged files with its own error type
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise ExportError(f"{weights} is damaged, truncated or not a safetensors file ({type(error).__name__}: "
                          f"{first}): {_FIX}") from None
    if model not in open_clip.list_models():
        raise ExportError(f"unknown open_clip model '{model}': pass the --model the weights were trained with")
    expected = open_clip.create_model(model).state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        fix = f"pass --model {trained_as} (its metadata)" if trained_as and trained_as != model else _FIX
        raise ExportError(f"{weights} does not hold the weights of open_clip model '{model}': {fix}")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = Path(out_dir) / f"{model}-{tag}.safetensors"
    save_file(half, str(path), metadata={"model": model, "tag": tag})
    return path, file_sha256(path)


def main(argv=None) -> int:
    """Run the export; a user error prints one line ``export_clip_weights: error: ...`` and returns 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="model.safetensors of scripts/pretrain_clip.py")
    parser.add_argument("--model", required=True, help="open_clip model name")
    parser.add_argument("--tag", required=True, help="pretrained tag to register")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    try:
        path, digest = export(args.weights, args.model, args.tag, args.out_dir)
    except (ExportError, OSError) as error:
        print(f"export_clip_weights: error: {error}", file=sys.stderr)
        return 2
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)\nsha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
