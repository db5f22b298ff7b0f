"""Export pretrained CLIP weights as the fp16 safetensors file the package ships, and print its sha256.

The file goes to ``tpsnet_plugin/text_prior/weights/<model>-<tag>.safetensors``; register it in
``PACKAGED_WEIGHTS`` (``tpsnet_plugin/text_prior/packaged_weights.py``) with the printed sha256::

    python scripts/export_clip_weights.py --weights runs/digits_clip/model.safetensors \\
        --model tpsnet-cnn-clip --tag digits_disjoint
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from safetensors.torch import load_file, save_file

import tpsnet_plugin  # noqa: F401  (registers the model configs)

# isort: split
import open_clip

from tpsnet_plugin.text_prior.packaged_weights import WEIGHTS_DIR


def export(weights: Path, model: str, tag: str, out_dir: Path = WEIGHTS_DIR) -> tuple[Path, str]:
    """Check the weights fit ``model``, write them as fp16 and return (path, sha256)."""
    state = load_file(str(weights))
    expected = open_clip.create_model(model).state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise ValueError(f"{weights} does not hold the weights of open_clip model '{model}'")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = Path(out_dir) / f"{model}-{tag}.safetensors"
    save_file(half, str(path), metadata={"model": model, "tag": tag})
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="model.safetensors of scripts/pretrain_clip.py")
    parser.add_argument("--model", required=True, help="open_clip model name")
    parser.add_argument("--tag", required=True, help="pretrained tag to register")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    path, digest = export(args.weights, args.model, args.tag, args.out_dir)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)\nsha256 {digest}")


if __name__ == "__main__":
    main()
