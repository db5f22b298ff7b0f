"""Evaluate an icon-pretrained open_clip model on the held-out icon themes (tango, gnome).

Rows: the trained weights, the same architecture at random init (seed 0), chance, and for the
cross-theme kNN also raw pixels (64 x 64 grayscale, cosine).

* image->name / name->image top-1/top-5: candidate names = the distinct holdout captions; text
  features are averaged over ``TEMPLATES`` (prompt ensembling);
* kNN across the two held-out themes: query a tango drawing, is its nearest gnome drawing
  (cosine) one with the same icon name? Only names present in both themes; aliases (names that
  share one drawing, manifest column ``source``) are merged into one item with a set of names.

Prints a table and writes JSON (default ``benchmarks/results/pretrain_clip_icons.json``)::

    python scripts/eval_clip.py --weights runs/icons_clip/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401  (registers tpsnet-tiny-clip)

# isort: split
import open_clip

from tpsnet_plugin.data.icons import TEMPLATES, load_manifest
from tpsnet_plugin.text_prior import TINY_CLIP_MODEL
from tpsnet_plugin.text_prior.icons_clip import (
    cross_theme_knn,
    encode_captions,
    encode_images,
    load_images,
    zero_shot_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]


def build_model(model_name: str, weights: str | None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    return model.eval()


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


def knn_sets(holdout, query_theme="tango", gallery_theme="gnome"):
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_CLIP_MODEL)
    parser.add_argument("--weights", required=True, help="trained weights (file path or open_clip tag)")
    parser.add_argument("--cache-dir", default=None, help="icon corpus folder")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/pretrain_clip_icons.json"))
    parser.add_argument("--train-log", default=None, help="train_log.json of the run, copied into the JSON")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.time()
    holdout = [r for r in load_manifest(args.cache_dir) if r.split == "holdout"]
    images = load_images([r.path for r in holdout], size=64)
    (q, g), n_shared = knn_sets(holdout)
    tokenizer = open_clip.get_tokenizer(args.model)

    rows = {
        "trained": evaluate(build_model(args.model, args.weights), tokenizer, holdout, images, (q, g)),
        "random_init": evaluate(build_model(args.model, None, seed=0), tokenizer, holdout, images, (q, g)),
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
