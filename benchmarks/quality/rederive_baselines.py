"""Starting points of the committed studies, evaluated exactly like their trained embeddings.

Studies written before every starting point went through the model's retrieval post-processing
(per-domain centring, then L2) hold raw-pixel and frozen-CLIP numbers that were not centred. This
script rebuilds each study's data from the config and overrides its JSON records and evaluates
the starting points with ``TPSNetTrainer.baseline`` (raw pixels) and the frozen offline CLIP, both
through the trainer's own evaluation. Studies whose data cannot be rebuilt here are listed with
the reason.

    python -m benchmarks.quality.rederive_baselines [--studies quality_digits quality_generic_digits ...]

Writes ``benchmarks/results/baselines_centred.json``: study -> ``{"raw_pixels": direction ->
metrics, "frozen_clip": ..., "data": the data section}`` or ``{"unavailable": reason}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._common import RESULTS_DIR, result_file, write_json
from benchmarks.quality.quality_digits import frozen_clip_baseline
from tpsnet_plugin.evaluation import mean_metrics
from tpsnet_plugin.training import TPSNetTrainer, load_config

# Studies whose data this release no longer builds: the old mnist-m blended every handwritten-mnist
# instance (both sides of a pair showed the same digits); today's mnist-m uses half of them.
OLD_MNIST_M = ("quality_digits_m", "quality_digits_m_printed", "quality_generic_digits_m",
               "quality_generic_digits_m_amplitude_mix", "quality_generic_digits_m_warmup128")
UNAVAILABLE = {name: "its mnist-m (all 5,000 handwritten-mnist instances blended) is no longer built"
               for name in OLD_MNIST_M}
# The studies of the uncentred era (every later study records centred starting points itself).
STUDIES = (
    "quality_digits", "quality_digits_reference_alignment", "quality_digits_full_after_warm_start_fix",
    "quality_digits2_icons", "quality_digits2_icons_i2tce", "quality_digits4_icons", "quality_digits4_icons_i2tce",
    "quality_generic_digits", "quality_generic_digits_warmup128",
    "quality_generic_digits_amplitude_mix", "quality_generic_digits4", "quality_generic_digits4_amplitude_mix",
    "quality_generic_icons", "quality_generic_icons_warmup128", "quality_generic_icons_amplitude_mix", *OLD_MNIST_M,
)
# What a starting point needs of the run: no CLIP for the raw pixels, nothing written.
QUIET = ["model.text_prior=false", "eval.plots=false", "accelerate.log_with=none", "eval.zero_shot=false",
         "model.compile=off"]


def rederive(study: str, work: Path, cache: dict[str, dict]) -> dict:
    record = json.loads(result_file(study).read_text())
    if study in UNAVAILABLE:
        return {"unavailable": UNAVAILABLE[study]}
    config = load_config(record["config"], [*record["extra"], *QUIET], output_dir=str(work / study))
    root = config["data"]["root"]
    if config["data"]["dataset"] == "folder" and not (root and Path(root).is_dir()):
        return {"unavailable": f"its data folder {root} is not on this machine (rebuild it with "
                               "scripts/icons_ucdir.py)"}
    key = json.dumps(config["data"], sort_keys=True)
    if key not in cache:
        results = TPSNetTrainer(config).baseline("raw_pixels")["results"]
        cache[key] = {"raw_pixels": results, "mean": mean_metrics(results)}
    out: dict = {"data": config["data"], "raw_pixels": cache[key]["raw_pixels"]}
    if "frozen_clip" in record["variants"]:
        results, _ = frozen_clip_baseline(record["config"], record["extra"], work / f"{study}-clip")
        out["frozen_clip"] = results
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", default=list(STUDIES))
    parser.add_argument("--out", default=str(RESULTS_DIR / "baselines_centred.json"))
    args = parser.parse_args(argv)
    cache: dict[str, dict] = {}
    report = {}
    with tempfile.TemporaryDirectory() as work:
        for study in args.studies:
            report[study] = rederive(study, Path(work), cache)
            if "raw_pixels" in report[study]:
                mean = mean_metrics(report[study]["raw_pixels"])["precision_at_1"]
                print(f"{study}: centred raw pixels mean P@1 {mean:.2f}")
            else:
                print(f"{study}: {report[study]['unavailable']}")
    write_json(Path(args.out), {"studies": report})
    return report


if __name__ == "__main__":
    main()
