"""What a run leaves behind: metrics files, summary, exported model and plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation import format_table, mean_metrics
from ..utils.io import atomic_write_text


def write_records(output_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Write ``metrics.jsonl`` (one line per evaluation and direction) and ``clustering.jsonl``.

    Rewritten whole from the history (which resume restores), so a resumed run has no gaps or repeats.
    """
    evaluations, clusterings = [], []
    for record in history:
        if "clustering" in record:
            clusterings.append(json.dumps({"stage": record["stage"], "epoch": record["epoch"], **record["clustering"]}))
            continue
        for direction, metrics in record["results"].items():
            evaluations.append(json.dumps({
                "stage": record["stage"], "epoch": record["epoch"], "direction": direction,
                "metrics": metrics, "pseudo_label_nmi": record["pseudo_label_nmi"],
            }))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (("metrics.jsonl", evaluations), ("clustering.jsonl", clusterings)):
        atomic_write_text(output_dir / name, "".join(line + "\n" for line in lines))


def build_summary(
    history: Sequence[Mapping[str, Any]],
    *,
    first_k: int,
    domain_names: Sequence[str],
    raw_pixel_baseline: Mapping[str, Mapping[str, float]] | None,
    **extra: Any,
) -> dict[str, Any]:
    """The run's summary: last-epoch results, the oracle-best epoch (flagged), clusterings, baseline.

    Args:
        history: The training state's records.
        first_k: The first P@k cut-off; the oracle-best epoch has the best mean P@first_k.
        domain_names: Domain names in dataset order.
        raw_pixel_baseline: Raw-pixel retrieval results, or None when images are not cached.
        **extra: Further entries (wall time, process count, config).
    """
    evaluated = [r for r in history if "results" in r and r["stage"] == "synergy"]
    if not evaluated:
        raise RuntimeError("No evaluation was recorded; synergy.epochs must be >= 1")
    key = f"precision_at_{first_k}"
    best = max(evaluated, key=lambda r: mean_metrics(r["results"])[key])
    clusterings = [r for r in history if "clustering" in r]
    return {
        "domains": list(domain_names),
        "last": evaluated[-1]["results"],
        "last_epoch": evaluated[-1]["epoch"],
        "oracle_best": {
            "note": f"epoch with the best mean {key} over directions; uses test labels (oracle)",
            "epoch": best["epoch"],
            **best["results"],
        },
        "pseudo_label_nmi": clusterings[-1]["clustering"]["nmi"] if clusterings else None,
        "clustering": [{"stage": r["stage"], "epoch": r["epoch"], **r["clustering"]} for r in clusterings],
        "raw_pixel_baseline": raw_pixel_baseline,
        **extra,
    }


def write_summary(output_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary.json`` and print the final table beside the baseline."""
    atomic_write_text(Path(output_dir) / "summary.json", json.dumps(summary, indent=2))
    print(format_table(summary["last"], baseline=summary["raw_pixel_baseline"]))


def export_model(accelerator, model, output_dir: str | Path, meta: Mapping[str, Any]) -> Path:
    """Save the trained TPSNet (safetensors) and what is needed to rebuild it under ``output_dir/model``."""
    folder = Path(output_dir) / "model"
    accelerator.save_model(model, folder)
    atomic_write_text(folder / "model_meta.json", json.dumps(dict(meta)))
    return folder
