"""Retrieval quality: ablations over seeds, on Digits or any folder dataset, from scratch or pretrained.

    python -m benchmarks.quality.quality_digits [--config configs/digits4.yaml] [--seeds 0 1 2]
                                                [--variants full no_priors ...] [--jobs N] [--threads T]

Variants (all through the same trainer, switched by config keys):

- ``raw_pixels``: grayscale pixels, cosine (no training);
- ``frozen_start`` / ``clip_zero_shot``: the starting points the trained runs report (with a pretrained
  backbone: its frozen features; with a pretrained CLIP: its zero-shot retrieval over the class names,
  flagged ``uses_class_names``); every starting point is evaluated like the trained embedding;
- ``frozen_clip``: the frozen image features of the offline CLIP shipped in the package
  (``tpsnet-tiny-clip``, ``icons``), cosine (no training): the starting point a backbone
  initialised from that CLIP would have, and its zero-shot naming of the classes (image -> class
  name top-1; digits as number words);
- ``instance_only``: instance-contrastive training only (no clustering losses:
  ``synergy.loss_weights.prototype=0``, no priors, no re-clustering);
- ``no_priors``: clustering + prototypes (+ instance loss), no text and no phase prior;
- ``phase``: + phase prior;  ``text``: + text prior;  ``full``: TPSNet (both priors);
- ``full_i2tce``: TPSNet with L_i2tce at weight 1 (``synergy.loss_weights.image_text=1``, the paper's; the
  Digits configs use it with the icons CLIP, the generic and mnist-m recipes set 0);
- ``text_icons`` / ``full_icons``: ``text`` / ``full`` with the offline CLIP shipped in the package
  (``model.clip_pretrained=icons``) as the text prior; ``text_random_clip`` / ``full_random_clip``: with
  a random CLIP (``model.clip_pretrained=null``), whatever the config names.

``--jobs N`` trains N runs at once in worker processes (``--threads`` torch threads each): on a
GPU machine with many cores the whole study takes minutes instead of hours.

Prints mean ± std over seeds of P@1/5/15 and mAP@All per direction and averaged, the pseudo-label
NMI, the epoch at which each run peaked (oracle, uses labels: a measure of pseudo-label drift), and
writes ``benchmarks/results/<name>.json`` (``--name``, default ``quality_digits``) plus ``<name>_ablation.png``
(per-direction bars) and ``<name>_curve.png`` (the full model's P@1 per evaluation and pseudo-label NMI per
clustering vs stage-2 epoch).
A finished run (``<work-dir>/<variant>-seed<k>/summary.json`` with the same config) is reused, so an
interrupted study continues where it stopped and runs made on another machine can be merged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import machine_facts
from tpsnet_plugin.evaluation import mean_metrics
from tpsnet_plugin.training import TPSNetTrainer, load_config

VARIANTS = {
    "instance_only": ["model.text_prior=false", "model.phase_prior=false", "synergy.loss_weights.prototype=0",
                      "cluster.recluster_every=0"],
    "no_priors": ["model.text_prior=false", "model.phase_prior=false"],
    "phase": ["model.text_prior=false"],
    "text": ["model.phase_prior=false"],
    "full": [],
    "full_i2tce": ["synergy.loss_weights.image_text=1"],
    # the text prior's CLIP set explicitly, whatever the config names
    "text_icons": ["model.phase_prior=false", "model.clip_pretrained=icons"],
    "full_icons": ["model.clip_pretrained=icons"],
    "text_random_clip": ["model.phase_prior=false", "model.clip_pretrained=null"],
    "full_random_clip": ["model.clip_pretrained=null"],
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# starting points read from the trained runs' summaries (variant name -> summary kind)
STARTING_POINTS = {"raw_pixels": "raw_pixels", "frozen_start": "frozen_features", "clip_zero_shot": "clip_zero_shot"}
# the default study: the pipeline's parts added one at a time, with the config's CLIP
ABLATION = ("instance_only", "no_priors", "phase", "text", "full", "full_i2tce")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def run_variant(config_path: str, variant: str, seed: int, extra: list[str], out: Path,
                threads: int | None = None) -> dict:
    """Train one run, or reuse it when ``out/<variant>-seed<seed>`` holds a finished run of the same config."""
    overrides = [*VARIANTS[variant], f"seed={seed}", "eval.plots=false", "accelerate.log_with=none", *extra]
    config = load_config(config_path, overrides, output_dir=str(out / f"{variant}-seed{seed}"))
    run_dir = Path(config["output_dir"])
    finished = run_dir / "summary.json"
    summary = json.loads(finished.read_text()) if finished.exists() else None
    if summary is not None and summary["config"] == config:
        print(f"reusing the finished run in {run_dir}")
    else:
        if threads:
            import torch

            torch.set_num_threads(threads)
        summary = TPSNetTrainer(config).fit(overwrite=True)  # an unfinished run of this variant is redone
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "history": history, "seconds": summary["wall_seconds"], "device": _device()}


def frozen_clip_baseline(config_path: str, extra: list[str], out: Path) -> tuple[dict, dict]:
    """The shipped offline CLIP, frozen, on this data: retrieval with its image features
    (direction -> metrics) and its zero-shot naming of the classes (digits as number words)."""
    import torch.nn.functional as F
    from open_clip import get_tokenizer

    from scripts.icons_clip import encode_captions, zero_shot_accuracy

    # last: the study's extra overrides must not swap the CLIP measured here
    overrides = [*extra, "eval.plots=false", "accelerate.log_with=none", "model.text_prior=true",
                 "model.clip_pretrained=icons"]
    trainer = TPSNetTrainer(load_config(config_path, overrides, output_dir=str(out / "frozen_clip")))
    features = F.normalize(trainer.embedder(encoder=trainer.networks.prompt_learner.encode_images,
                                         desc="frozen CLIP features"), dim=-1)
    names = [NUMBER_WORDS[int(c)] if c.isdigit() else c.replace("_", " ") for c in trainer.data.dataset.classes]
    clip = trainer.networks.prompt_learner.clip
    text = encode_captions(clip, get_tokenizer(trainer.config["model"]["clip_model"]), names)
    zero_shot = zero_shot_accuracy(features, [names[label] for label in trainer.data.true_labels], text, names, ks=(1,))
    return trainer.evaluator.evaluate(features), zero_shot  # the run's retrieval post-processing, as for the model


def _untrained(results: dict[str, dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """A baseline's direction -> metrics in the [mean, std] form of the trained variants (no seeds)."""
    return {d: {m: [v, 0.0] for m, v in ms.items()} for d, ms in {**results, "mean": mean_metrics(results)}.items()}


def _label_free_vs_oracle(runs: list[dict]) -> dict:
    """Per run: the label-free epoch, the oracle epoch and the mean P@1 the label-free choice gives up."""
    rows = []
    for run in runs:
        summary = run["summary"]
        chosen, oracle = summary.get("label_free_best"), summary["oracle_best"]
        if chosen is None:
            continue
        p1 = {name: statistics.fmean(metrics["precision_at_1"] for direction, metrics in record.items()
                                     if isinstance(metrics, dict) and "precision_at_1" in metrics)
              for name, record in (("label_free", chosen), ("oracle", oracle))}
        rows.append({"label_free_epoch": chosen["epoch"], "oracle_epoch": oracle["epoch"],
                     "last_epoch": summary["last_epoch"], "p1_given_up": p1["oracle"] - p1["label_free"]})
    return {"runs": rows, "same_epoch": sum(r["label_free_epoch"] == r["oracle_epoch"] for r in rows),
            "of": len(rows)}


def _repair_text(repair: dict | None) -> str:
    """A run's stage-1 re-pairing total: share of labels changed and the share of those that are right."""
    if not repair:
        return "-"
    right = "-" if repair["precision"] is None else f"{100 * repair['precision']:.1f}"
    return f"{100 * repair['share']:.2f} % ({right} % right)"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores)"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict], key: str = "last") -> dict[str, dict[str, list[float]]]:
    """direction -> metric -> [mean, std] over runs (plus a "mean" direction)."""
    table: dict[str, dict[str, list[float]]] = {}
    for direction in [*runs[0]["summary"][key].keys(), "mean"]:
        table[direction] = {}
        for metric in runs[0]["summary"][key][next(iter(runs[0]["summary"][key]))]:
            values = [
                mean_metrics(r["summary"][key])[metric] if direction == "mean" else r["summary"][key][direction][metric]
                for r in runs
            ]
            table[direction][metric] = list(_mean_std(values))
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits4.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["raw_pixels", *ABLATION],
                        choices=[*STARTING_POINTS, "frozen_clip", *VARIANTS])
    parser.add_argument("--set", dest="extra", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra config overrides for every run")
    parser.add_argument("--work-dir", default="outputs/quality_digits")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="quality_digits", help="file stem of the JSON and plots")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict = {"config": args.config, "seeds": args.seeds, "extra": args.extra, "machine": machine_facts(),
                    "variants": {}}
    lines = []
    trained = [v for v in args.variants if v not in (*STARTING_POINTS, "frozen_clip")]
    jobs = [(args.config, v, seed, args.extra, Path(args.work_dir), args.threads)
            for v in trained for seed in args.seeds]
    if args.jobs > 1:
        # spawn: every run starts from a fresh interpreter (no forked torch/OpenMP state)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(run_variant, *zip(*jobs)))
    else:
        done = [run_variant(*job) for job in jobs]
    for variant in trained:
        runs = [run for job, run in zip(jobs, done) if job[1] == variant]
        peaks = [r["summary"]["oracle_best"]["epoch"] for r in runs]
        report["variants"][variant] = {
            "last": aggregate(runs),
            "pseudo_label_nmi": list(_mean_std([r["summary"]["pseudo_label_nmi"] or 0.0 for r in runs])),
            # every clustering of every run (after the warm-up, then each re-clustering): where labels drift
            "clustering": [r["summary"].get("clustering", []) for r in runs],
            "oracle_peak_epochs": peaks,
            "label_free": _label_free_vs_oracle(runs),
            "seconds": [r["seconds"] for r in runs],
            "devices": sorted({r["device"] for r in runs}),
            "curves": [r["history"] for r in runs],
        }
        repairs = [r["summary"].get("prompt_repair") for r in runs]
        if any(repairs):
            report["variants"][variant]["prompt_repair"] = repairs
        # the starting points every run evaluates (the same for every seed): raw pixels, frozen start, zero-shot
        for name, kind in STARTING_POINTS.items():
            point = runs[0]["summary"].get("starting_points", {}).get(kind)
            if name in args.variants and name not in report["variants"] and point is not None:
                flags = {k: point[k] for k in ("uses_class_names", "top1_accuracy") if k in point}
                report["variants"][name] = {"last": _untrained(point["results"]), **flags}
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))

    if "frozen_clip" in args.variants:
        results, zero_shot = frozen_clip_baseline(args.config, args.extra, Path(args.work_dir))
        report["variants"]["frozen_clip"] = {"last": _untrained(results), "zero_shot": zero_shot}
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))

    for variant, data in report["variants"].items():
        mean = data["last"]["mean"]
        lines.append(
            f"{variant:14s} " + "  ".join(f"{m}={v[0]:.2f}±{v[1]:.2f}" for m, v in mean.items())
            + (f"  zero-shot class naming top-1={100 * data['zero_shot']['image_to_name_top1']:.2f}"
               f" (chance {100 * data['zero_shot']['image_to_name_chance_top1']:.2f})" if "zero_shot" in data else "")
            + (f"  zero-shot top-1={data['top1_accuracy']:.2f} (uses class names)" if "top1_accuracy" in data else "")
            + ("  stage-1 re-paired " + ", ".join(map(_repair_text, data["prompt_repair"]))
               if data.get("prompt_repair") else "")
            + (f"  nmi={data['pseudo_label_nmi'][0]:.3f}  peak epochs={data['oracle_peak_epochs']}"
               if "pseudo_label_nmi" in data else "")
            + (f"  label-free epochs={[r['label_free_epoch'] for r in data['label_free']['runs']]}"
               f" (oracle's in {data['label_free']['same_epoch']}/{data['label_free']['of']})"
               if data.get("label_free", {}).get("runs") else "")
        )
        for seed, records in zip(report["seeds"], data.get("clustering", [])):
            if records:
                head = f"{'':14s} seed {seed} clusterings (stage:epoch nmi [per domain] ids_changed): "
                lines.append(head + "; ".join(
                    f"{r['stage']}:{r['epoch']} {r['nmi']:.3f} "
                    f"[{' '.join(f'{v:.2f}' for v in r['nmi_per_domain'].values())}] "
                    f"{r['ids_changed']}" for r in records))
    print("\n".join(lines))
    _plots(report, out, args.name)
    return report


def _plots(report: dict, out: Path, name: str = "quality_digits") -> None:
    variants = list(report["variants"])
    directions = [d for d in report["variants"][variants[0]]["last"] if d != "mean"]
    figure, axis = plt.subplots(figsize=(max(8, len(directions) * 1.2), 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [report["variants"][variant]["last"][d]["precision_at_1"] for d in directions]
        axis.bar([x + i * width for x in range(len(directions))], [v[0] for v in values], width,
                 yerr=[v[1] for v in values], label=variant)
    axis.set_xticks([x + 0.4 - width / 2 for x in range(len(directions))])
    axis.set_xticklabels(directions, rotation=45, ha="right", fontsize=7)
    axis.set_ylabel("P@1 (last epoch)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / f"{name}_ablation.png", dpi=100)
    plt.close(figure)

    full_name = next((v for v in ("full", "full_icons") if v in report["variants"]), None)
    if full_name is not None:
        figure, axis = plt.subplots(figsize=(6, 4))
        full = report["variants"][full_name]
        clusterings_per_seed = full.get("clustering") or [[] for _ in full["curves"]]
        for seed, history, clusterings in zip(report["seeds"], full["curves"], clusterings_per_seed):
            by_epoch: dict[int, list[dict]] = {}
            for line in history:
                if line["stage"] == "synergy":
                    by_epoch.setdefault(line["epoch"], []).append(line)
            epochs = sorted(by_epoch)
            p1 = [statistics.fmean(x["metrics"]["precision_at_1"] for x in by_epoch[e]) for e in epochs]
            (line,) = axis.plot(epochs, p1, marker="o", label=f"P@1 seed {seed}")
            # NMI of every clustering: epoch 0 is the one after the warm-up
            axis.plot([r["epoch"] for r in clusterings], [100 * r["nmi"] for r in clusterings], linestyle="--",
                      marker="x", color=line.get_color(), label=f"100·NMI seed {seed}")
        axis.set_xlabel("stage-2 epoch (0: clustering after the warm-up)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / f"{name}_curve.png", dpi=100)
        plt.close(figure)


if __name__ == "__main__":
    main()
