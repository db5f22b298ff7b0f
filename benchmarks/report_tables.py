"""The result tables of the README and docs, generated from ``benchmarks/results/*.json``.

A generated table sits between two markers in a Markdown file::

    <!-- table: study quality_digits_pretrained no_priors phase text full -->
    ...the table...
    <!-- /table -->

``study NAME [VARIANTS...]`` is one study of ``benchmarks/quality/quality_digits.py``: a row per variant
(mean P@1 at the last epoch ± the standard deviation over seeds, the seeds' own values, mAP@All)
and the centred raw-pixel starting point. Studies written before starting points were centred
take it from ``baselines_centred.json`` (``benchmarks/quality/rederive_baselines.py``) and show the
uncentred number beside it. ``summary`` is the README's table of the shipped recipes;
``wall_times`` (a table) and ``wall_times_line`` (a sentence) the times of ``make demo`` and
``make test`` on a fresh clone (``benchmarks/speed/wall_times.py``).

    python -m benchmarks.report_tables            # rewrite every marked table
    python -m benchmarks.report_tables --check    # exit status 1 when a table differs from the JSON
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from benchmarks._common import result_file

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/results.md", "docs/benchmarks.md", "docs/studies/2026-12-recipe-history.md")
MARKER = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)
STARTING_POINTS = {"raw_pixels": "raw pixels", "frozen_start": "frozen start (CLIP image tower)",
                   "clip_zero_shot": "CLIP zero-shot (uses class names)", "frozen_clip": "frozen icons CLIP"}
VARIANTS = {
    "instance_only": "instance loss only", "no_priors": "no priors", "phase": "phase prior only",
    "text": "text prior only", "full": "full TPSNet", "full_i2tce": "full TPSNet, image-text weight 1",
    "text_icons": "text prior, icons CLIP", "full_icons": "full TPSNet, icons CLIP",
    "text_random_clip": "text prior, random CLIP", "full_random_clip": "full TPSNet, random CLIP",
}
# The README's table: label, study, variant, the other variants quoted beside it.
SUMMARY = (
    ("Digits mnist ↔ printed from scratch, `configs/digits.yaml`", "quality_digits2_icons_i2tce", "full_i2tce", ()),
    ("Digits, four domains, from scratch, `configs/digits4.yaml`", "quality_digits4_icons_i2tce", "full_i2tce", ()),
    ("Digits mnist-half ↔ mnist-m from the `digits_disjoint` CLIP, `configs/digits_pretrained.yaml`",
     "quality_digits_pretrained", "full", ("no_priors",)),
    ("Icons tango ↔ gnome (held out) from the `artwork` CLIP, `configs/folder_pretrained.yaml`",
     "quality_icons_tango_gnome_pretrained", "full", ("phase",)),
    ("Icons tango ↔ gnome (held out), generic recipe from scratch, `configs/folder.yaml`",
     "quality_icons_tango_gnome_scratch", "full", ()),
)


def load(name: str) -> dict:
    """A result JSON by name (current or archived)."""
    return json.loads(result_file(name).read_text())


def last_epoch_p1(curve: list[dict]) -> float:
    """Mean P@1 over the directions at the last epoch of one run's records."""
    final = max((r["stage"] == "synergy", r["epoch"]) for r in curve if "metrics" in r)
    values = [r["metrics"]["precision_at_1"] for r in curve
              if "metrics" in r and (r["stage"] == "synergy", r["epoch"]) == final]
    return statistics.fmean(values)


def seed_values(variant: dict) -> list[float]:
    return [last_epoch_p1(curve) for curve in variant["curves"]]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _directions_mean(results: dict, metric: str) -> float:
    return statistics.fmean(m[metric] for d, m in results.items() if d != "mean")


def centred_raw_pixels(name: str, study: dict) -> tuple[float | None, float | None]:
    """(centred, uncentred) mean P@1 of raw pixels for a study; the uncentred one only for old studies."""
    recorded = study["variants"].get("raw_pixels")
    rederived = load("baselines_centred")["studies"].get(name)
    if rederived is None:  # the study recorded its starting points centred itself
        return (recorded["last"]["mean"]["precision_at_1"][0] if recorded else None), None
    uncentred = recorded["last"]["mean"]["precision_at_1"][0] if recorded else None
    if "raw_pixels" not in rederived:
        return None, uncentred
    return _directions_mean(rederived["raw_pixels"], "precision_at_1"), uncentred


def study_table(name: str, variants: list[str]) -> str:
    study = load(name)
    rederived = load("baselines_centred")["studies"].get(name, {})
    variants = variants or list(study["variants"])
    lines = ["| run | mean P@1 (last epoch) | seeds | mean mAP@All |", "|---|---|---|---|"]
    for variant in variants:
        data = study["variants"][variant]
        if "curves" in data:
            values = seed_values(data)
            mean, std = mean_std(values)
            seeds = ", ".join(f"{v:.2f}" for v in values)
            m_ap = data["last"]["mean"]["map_at_all"][0]
            lines.append(f"| {VARIANTS.get(variant, variant)} | {mean:.2f} ± {std:.2f} | {seeds} | {m_ap:.2f} |")
            continue
        label = STARTING_POINTS.get(variant, variant)
        if variant in rederived:  # an old study: its centred value, the recorded one beside it
            p1 = _directions_mean(rederived[variant], "precision_at_1")
            m_ap = _directions_mean(rederived[variant], "map_at_all")
            old = data["last"]["mean"]["precision_at_1"][0]
            lines.append(f"| starting point: {label} (rederived, centred) | {p1:.2f} | – | {m_ap:.2f} |")
            lines.append(f"| starting point: {label}, as recorded (not centred) | {old:.2f} | – | – |")
        elif rederived.get("unavailable") and variant in ("raw_pixels", "frozen_clip"):
            old = data["last"]["mean"]["precision_at_1"][0]
            lines.append(f"| starting point: {label}, as recorded (not centred; {rederived['unavailable']}) | "
                         f"{old:.2f} | – | – |")
        else:
            mean = data["last"]["mean"]
            lines.append(f"| starting point: {label} | {mean['precision_at_1'][0]:.2f} | – | "
                         f"{mean['map_at_all'][0]:.2f} |")
    return "\n".join(lines) + "\n"


def summary_table() -> str:
    lines = ["| run | mean P@1 (3 seeds, last epoch) | starting points (centred) |", "|---|---|---|"]
    for label, name, variant, others in SUMMARY:
        study = load(name)
        mean, std = mean_std(seed_values(study["variants"][variant]))
        quoted = "".join(f" ({VARIANTS.get(other, other)} {mean_std(seed_values(study['variants'][other]))[0]:.2f})"
                         for other in others)
        points = []
        centred, _ = centred_raw_pixels(name, study)
        for key, label_point in (("frozen_start", "frozen CLIP"), ("clip_zero_shot", "zero-shot")):
            if key in study["variants"]:
                points.append(f"{label_point} {study['variants'][key]['last']['mean']['precision_at_1'][0]:.2f}")
        points.append(f"raw pixels {centred:.2f}")
        lines.append(f"| {label} | {mean:.2f} ± {std:.2f}{quoted} | {', '.join(points)} |")
    return "\n".join(lines) + "\n"


def wall_times_table() -> str:
    record = load("wall_times")
    machine = record["machine"]
    where = f"{machine['nproc']} cores, {machine['cpu_model']}"
    if machine.get("busy_at_start"):
        where += f", busy (load {machine['load_average_at_start_1_5_15'][0]} at the start)"
    lines = ["| command | wall time | exit status | machine |", "|---|---|---|---|"]
    for command, result in record["commands"].items():
        minutes, seconds = divmod(round(result["seconds"]), 60)
        lines.append(f"| `make {command}` | {minutes} min {seconds:02d} s | {result['returncode']} | {where} |")
    return "\n".join(lines) + "\n"


def wall_times_line() -> str:
    """One sentence for the README: each command's time and the machine."""
    record = load("wall_times")
    times = []
    for command, result in record["commands"].items():
        minutes, seconds = divmod(round(result["seconds"]), 60)
        times.append(f"`make {command}` {minutes} min {seconds:02d} s" + ("" if result["returncode"] == 0 else
                                                                          f" (exit status {result['returncode']})"))
    machine = record["machine"]
    return (f"On a fresh clone, install included ({machine['nproc']} CPU cores, "
            f"`python -m benchmarks.speed.wall_times`): {', '.join(times)}.\n")


def render(spec: str) -> str:
    kind, *args = spec.split()
    if kind == "study":
        return study_table(args[0], args[1:])
    if kind == "summary":
        return summary_table()
    if kind == "wall_times":
        return wall_times_table()
    if kind == "wall_times_line":
        return wall_times_line()
    raise ValueError(f"unknown table kind {kind!r} in <!-- table: {spec} -->")


def regenerate(text: str) -> str:
    return MARKER.sub(lambda m: m.group(1) + render(m.group("spec")) + m.group(4), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report stale tables instead of rewriting them")
    args = parser.parse_args(argv)
    stale = []
    for document in DOCUMENTS:
        path = ROOT / document
        if not path.exists():
            continue
        text = path.read_text()
        fresh = regenerate(text)
        if fresh != text:
            stale.append(document)
            if not args.check:
                path.write_text(fresh)
    if stale:
        print(("stale tables in " if args.check else "rewrote tables in ") + ", ".join(stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
