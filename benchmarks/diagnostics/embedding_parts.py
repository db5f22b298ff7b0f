"""Which part of trained TPSNet models retrieves best (diagnosis, uses labels).

For each finished trainer run, loads its latest checkpoint and evaluates, with the run's own
evaluator (every direction; each feature L2-normalised, then per-domain centring and
normalisation as configured, as the trainer treats its embeddings), four features of every image:

- ``embedding``: the retrieval embedding I' (after the text-prior synergy step; the run's result);
- ``fused``: the backbone's fused feature I_f (RGB and phase tokens, before the synergy step);
- ``rgb``: the RGB token I_rgb; ``phase``: the phase token I_pha (runs with the phase prior).

A part that retrieves better than ``embedding`` locates a loss in the steps after it.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.diagnostics.embedding_parts --runs outputs/a/full-seed0 ...
[--out FILE]`` (default ``benchmarks/results/embedding_parts.json``). Prints mean P@1 per run and
part, and mean ± std over the runs of each variant (runs named ``<variant>-seed<k>``, as
``benchmarks/quality/quality_digits.py`` names them); writes every direction's metrics.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch.nn.functional as F

from benchmarks._common import RESULTS_DIR, resume_run, write_json
from tpsnet_plugin.evaluation import mean_metrics

PARTS = ("embedding", "fused", "rgb", "phase")


def part_results(run: Path) -> dict[str, dict]:
    """Part name -> direction -> metrics of the run's latest checkpoint (parts the model has)."""
    trainer = resume_run(run)
    backbone = trainer.model.backbone
    features = {
        "embedding": trainer.embedder(synergy=trainer.state.stage in ("synergy", "done")),
        "fused": trainer.embedder(synergy=False, desc="fused"),
        "rgb": trainer.embedder(encoder=lambda images: F.normalize(backbone.rgb_branch(images), dim=-1), desc="rgb"),
    }
    if backbone.phase_model is not None:
        features["phase"] = trainer.embedder(encoder=lambda images: F.normalize(backbone.phase_branch(images), dim=-1),
                                          desc="phase")
    return {part: trainer.evaluator.evaluate(value) for part, value in features.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="output_dirs of trainer runs (each has config.yaml, checkpoints/)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embedding_parts.json")
    args = parser.parse_args(argv)
    runs = {}
    for run in args.runs:
        results = part_results(run)
        runs[str(run)] = results
        means = "  ".join(f"{part} {mean_metrics(r)['precision_at_1']:6.2f}" for part, r in results.items())
        print(f"{str(run):50s} mean P@1: {means}")
    summary = {}  # runs named <variant>-seed<k> (benchmarks/quality/quality_digits.py) are grouped by variant
    for run, results in runs.items():
        group = Path(run).name.rsplit("-seed", 1)[0]
        for part, metrics in results.items():
            summary.setdefault(group, {}).setdefault(part, []).append(mean_metrics(metrics)["precision_at_1"])
    for group, parts in summary.items():
        for part, values in parts.items():
            parts[part] = [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
        print(f"{group:20s} mean P@1 over runs: "
              + "  ".join(f"{part} {m:.2f} ± {s:.2f}" for part, (m, s) in parts.items()))
    report = {"benchmark": "embedding_parts", "runs": runs, "mean_precision_at_1": summary}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
