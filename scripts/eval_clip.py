"""Evaluate an icon-pretrained open_clip model on the held-out icon themes (tango, gnome).

Rows: the trained weights, the same architecture at random init (seed 0), chance, and for the
cross-theme kNN also raw pixels (64 x 64 grayscale, cosine).

* image->name / name->image top-1/top-5: candidate names = the distinct holdout captions; text
  features are averaged over ``TEMPLATES`` (prompt ensembling);
* kNN across the two held-out themes: query a tango drawing, is its nearest gnome drawing
  (cosine) one with the same icon name? Only names present in both themes; aliases (names that
  share one drawing, manifest column ``source``) are merged into one item with a set of names.

Prints a table and writes JSON (default ``benchmarks/results/pretrain_clip_icons.json``)::

    python -m scripts.eval_clip --weights runs/icons_clip/model.safetensors

The weights file is read without unpickling anything before open_clip loads it. User errors (a
damaged file or one holding pickled code, weights of another ``--model``, weights trained on a
theme this corpus holds out, a corpus without the tango and gnome holdout) print one line
``eval_clip: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

import tpsnet_plugin  # noqa: F401  (registers tpsnet-tiny-clip)

# isort: split
import open_clip

from scripts.icons_clip import (
    cross_theme_knn,
    encode_captions,
    encode_images,
    load_images,
    zero_shot_accuracy,
)
from tpsnet_plugin.data.icons import TEMPLATES, IncompleteCorpusError, default_cache_dir, load_manifest
from tpsnet_plugin.text_prior import TINY_CLIP_MODEL
from tpsnet_plugin.text_prior.domain_prompt_learner import create_frozen_clip
from tpsnet_plugin.text_prior.packaged_weights import PackagedWeightsError
from tpsnet_plugin.training.checkpoint import CheckpointError, check_weights_file

ROOT = Path(__file__).resolve().parents[1]
KNN_THEMES = ("tango", "gnome")  # query theme, gallery theme


class EvalError(ValueError):
    """Weights or a corpus this evaluation cannot use; the message names the file and the fix."""


# Errors that are the user's to fix: one line ``eval_clip: error: ...``, exit status 2 (see main).
USER_ERRORS = (EvalError, CheckpointError, IncompleteCorpusError, PackagedWeightsError, OSError)


def weights_metadata(weights: str | None) -> dict[str, str]:
    """The metadata of a safetensors weights file (scripts/pretrain_clip.py writes model, corpus and
    training themes); empty for tags and other files."""
    if not weights or not weights.endswith(".safetensors") or not Path(weights).is_file():
        return {}
    with safe_open(weights, "pt") as handle:
        return handle.metadata() or {}


def build_model(model_name: str, weights: str | None, seed: int = 0) -> torch.nn.Module:
    """``model_name`` at random init (``weights=None``), with a pretrained tag, or with a weights file.

    Raises:
        EvalError: Unknown model or tag; the weights file holds another model's weights.
        CheckpointError: The weights file is damaged, truncated or holds pickled code (never unpickled).
        PackagedWeightsError: Packaged weights are missing or damaged.
    """
    torch.manual_seed(seed)
    if weights is None or not Path(weights).is_file():
        try:
            return create_frozen_clip(model_name, weights)  # checks the model name, tags and packaged weights
        except ValueError as error:
            raise EvalError(str(error)) from None
    fix = ("pass an intact weights file: the model.safetensors scripts/pretrain_clip.py wrote, or a state dict "
           "of plain tensors")
    check_weights_file(weights, fix)
    trained_as = weights_metadata(weights).get("model")
    if trained_as and trained_as != model_name:
        raise EvalError(f"{weights} holds the weights of '{trained_as}' (its metadata), not of --model "
                        f"{model_name}: pass --model {trained_as}")
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    except (RuntimeError, KeyError, ValueError) as error:  # load_state_dict: missing/unexpected keys, sizes
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise EvalError(f"{weights} does not hold weights of --model {model_name} ({type(error).__name__}: {first}): "
                        "pass the --model they were trained with") from None
    return model.eval()


def check_holdout(holdout, weights: str, corpus) -> None:
    """Refuse a corpus without the tango and gnome holdout, and weights trained on a theme it holds out.

    Raises:
        EvalError: Naming the corpus, the themes and the fix.
    """
    held_out = {r.theme for r in holdout}
    if not set(KNN_THEMES) <= held_out:
        raise EvalError(f"the icon corpus {corpus} holds out {sorted(held_out)}, not {' and '.join(KNN_THEMES)} "
                        "(the themes this evaluation measures): build it with scripts/build_icons.py's default "
                        "--holdout tango gnome, or pass --cache-dir of such a corpus")
    try:
        trained_on = set(json.loads(weights_metadata(weights).get("train_themes", "[]")))
    except ValueError:
        trained_on = set()
    seen = sorted(trained_on & held_out)
    if seen:
        raise EvalError(f"{weights} was trained on {', '.join(seen)}, which the icon corpus {corpus} holds out: "
                        "its scores would count seen themes as unseen; evaluate it on the corpus it was trained "
                        "with (another holdout), or train on this corpus (scripts/pretrain_clip.py --cache-dir)")


def holdout_items(records):
    """Distinct drawings of a theme: (theme, source) -> first record and the set of its names."""
    items: dict[tuple[str, str], list] = {}
    for record in records:
        key = (record.theme, record.source)
        if key not in items:
            items[key] = [record, set()]
        items[key][1].add(record.name)
    return items


def evaluate(model, tokenizer, holdout, images, knn_sets) -> dict:
    features = encode_images(model, images)
    captions = [r.caption for r in holdout]
    candidates = sorted(set(captions))
    text = encode_captions(model, tokenizer, candidates, TEMPLATES)
    result = zero_shot_accuracy(features, captions, text, candidates)
    (q_idx, q_names), (g_idx, g_names) = knn_sets
    result["knn_tango_to_gnome"] = cross_theme_knn(features[q_idx], q_names, features[g_idx], g_names)
    return result


def knn_sets(holdout, query_theme=KNN_THEMES[0], gallery_theme=KNN_THEMES[1]):
    names = {theme: {r.name for r in holdout if r.theme == theme} for theme in (query_theme, gallery_theme)}
    shared = names[query_theme] & names[gallery_theme]
    position = {id(r): i for i, r in enumerate(holdout)}
    out = []
    for theme in (query_theme, gallery_theme):
        indices, name_sets = [], []
        for record, aliases in holdout_items([r for r in holdout if r.theme == theme]).values():
            kept = frozenset(aliases & shared)
            if kept:
                indices.append(position[id(record)])
                name_sets.append(kept)
        out.append((torch.tensor(indices), name_sets))
    return out, len(shared)


def main(argv=None) -> int:
    """Run the evaluation; a user error prints one line ``eval_clip: error: ...`` on stderr and returns 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_CLIP_MODEL)
    parser.add_argument("--weights", required=True, help="trained weights (file path or open_clip tag)")
    parser.add_argument("--cache-dir", default=None, help="icon corpus folder")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/pretrain_clip_icons.json"))
    parser.add_argument("--train-log", default=None, help="train_log.json of the run, copied into the JSON")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        return evaluate_weights(args, argv)
    except USER_ERRORS as error:
        print(f"eval_clip: error: {error}", file=sys.stderr)
        return 2


def evaluate_weights(args: argparse.Namespace, argv=None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.time()
    holdout = [r for r in load_manifest(args.cache_dir) if r.split == "holdout"]
    random_init = build_model(args.model, None, seed=0)  # checks --model first
    trained = build_model(args.model, args.weights)  # checks the weights file before its metadata is read
    check_holdout(holdout, args.weights, args.cache_dir if args.cache_dir is not None else default_cache_dir())
    images = load_images([r.path for r in holdout], size=64)
    (q, g), n_shared = knn_sets(holdout)
    tokenizer = open_clip.get_tokenizer(args.model)

    rows = {
        "trained": evaluate(trained, tokenizer, holdout, images, (q, g)),
        "random_init": evaluate(random_init, tokenizer, holdout, images, (q, g)),
    }
    gray = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).flatten(1) / 255.0
    gray = F.normalize(gray, dim=-1)
    pixels = cross_theme_knn(gray[q[0]], q[1], gray[g[0]], g[1])
    trained = rows["trained"]
    table = [("image->name top-1", "image_to_name_top1", "image_to_name_chance_top1"),
             ("image->name top-5", "image_to_name_top5", "image_to_name_chance_top5"),
             ("name->image top-1", "name_to_image_top1", "name_to_image_chance_top1"),
             ("name->image top-5", "name_to_image_top5", "name_to_image_chance_top5")]
    lines = [f"held-out themes tango + gnome: {trained['images']} images, {trained['candidates']} candidate names",
             f"{'metric (%)':<32}{'trained':>10}{'random':>10}{'pixels':>10}{'chance':>10}"]
    for label, key, chance in table:
        lines.append(f"{label:<32}{100 * trained[key]:>10.2f}{100 * rows['random_init'][key]:>10.2f}"
                     f"{'-':>10}{100 * trained[chance]:>10.2f}")
    knn = trained["knn_tango_to_gnome"]
    lines.append(f"{'kNN tango->gnome top-1':<32}{100 * knn['top1']:>10.2f}"
                 f"{100 * rows['random_init']['knn_tango_to_gnome']['top1']:>10.2f}"
                 f"{100 * pixels['top1']:>10.2f}{100 * knn['chance_top1']:>10.2f}")
    lines.append(f"  ({knn['queries']} tango drawings -> {knn['gallery']} gnome drawings, {n_shared} shared names)")
    print("\n".join(lines))

    result = {
        "what": "a CLIP pretrained offline, evaluated on the icon corpus's held-out themes tango + gnome",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix() if sys.argv else "scripts/eval_clip.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "weights": str(args.weights),
        "rows": rows,
        "raw_pixels_knn_tango_to_gnome": pixels,
        "shared_names_tango_gnome": n_shared,
        "table": lines,
        "eval_seconds": round(time.time() - start, 1),
    }
    if args.train_log:
        log = json.loads(Path(args.train_log).read_text())
        result["training"] = {k: log[k] for k in ("settings", "corpus", "total_steps", "train_images",
                                                  "images_per_theme", "train_seconds", "loss_curve",
                                                  "theme_probabilities") if k in log}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
