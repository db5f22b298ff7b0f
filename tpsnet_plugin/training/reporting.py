"""What a run leaves behind: metrics files, summary, exported model and plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from ..evaluation import format_table, mean_metrics
from ..models.pretrained import save_config
from ..utils.io import atomic_write_text
from .state import TrainingState

if TYPE_CHECKING:
    from .run_evaluation import RunEvaluator


def write_records(output_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Write ``metrics.jsonl`` (one line per evaluation and direction, the starting points first) and
    ``clustering.jsonl`` (every clustering and every prompts-stage re-pairing, key ``repair``).

    Rewritten whole from the history (which resume restores), so a resumed run has no gaps or repeats.
    """
    evaluations, clusterings = [], []
    for record in history:
        if "clustering" in record:
            clusterings.append(json.dumps({"stage": record["stage"], "epoch": record["epoch"], **record["clustering"]}))
        elif "repair" in record:  # the prompts stage's label re-pairings, beside the clusterings they correct
            clusterings.append(json.dumps({"stage": record["stage"], "epoch": record["epoch"], **record["repair"]}))
        elif "baseline" in record:
            for direction, metrics in record["baseline"]["results"].items():
                evaluations.append(json.dumps({
                    "stage": "baseline", "epoch": 0, "direction": direction, "metrics": metrics,
                    "baseline": record["baseline"]["kind"],
                }))
        else:
            for direction, metrics in record["results"].items():
                evaluations.append(json.dumps({
                    "stage": record["stage"], "epoch": record["epoch"], "direction": direction,
                    "metrics": metrics, "pseudo_label_nmi": record["pseudo_label_nmi"],
                    "label_free_score": record.get("label_free_score"),
                }))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (("metrics.jsonl", evaluations), ("clustering.jsonl", clusterings)):
        atomic_write_text(output_dir / name, "".join(line + "\n" for line in lines))


class RunRecords:
    """The run's history of clusterings, re-pairings and evaluations, kept in ``state.history`` and written to
    ``metrics.jsonl`` / ``clustering.jsonl`` after each record (main process), logged and printed.

    Args:
        state: The run's state (its ``history`` is checkpointed with it).
        accelerator: The run's accelerator (main process, trackers, printing).
        output_dir: The run's folder.
    """

    def __init__(self, state: TrainingState, accelerator: Accelerator, output_dir: str | Path) -> None:
        self.state, self.accelerator, self.output_dir = state, accelerator, Path(output_dir)

    def record(self, record: Mapping[str, Any]) -> None:
        """Append a record to the history and rewrite the records files."""
        self.state.history.append(dict(record))
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)

    @property
    def last_nmi(self) -> float | None:
        """NMI of the latest pseudo-labels with the true classes (diagnostics only)."""
        clusterings = [r for r in self.state.history if "clustering" in r]
        return clusterings[-1]["clustering"]["nmi"] if clusterings else None

    def record_evaluation(self, results: dict[str, dict[str, float]], label_free_score: float | None = None) -> None:
        """Record an evaluation at the current stage and epoch, log its means to the trackers and print them."""
        state = self.state
        self.record({"stage": state.stage, "epoch": state.epoch, "pseudo_label_nmi": self.last_nmi,
                     "label_free_score": label_free_score, "results": results})
        mean = mean_metrics(results)
        self.accelerator.log({f"eval/{k}": v for k, v in mean.items()}, step=state.epoch)
        self.accelerator.print(f"[{state.stage} epoch {state.epoch}] "
                               + ", ".join(f"{k}={v:.2f}" for k, v in mean.items()))

    def record_starting_points(self, evaluator: RunEvaluator) -> None:
        """Evaluate every starting point of the run before any training, once per run (a resumed run has them)."""
        if any("baseline" in record for record in self.state.history):
            return
        # The starting points draw no random numbers from the run's streams: training is the same with or without.
        device = self.accelerator.device
        devices = [device] if device.type == "cuda" else []
        for kind in evaluator.starting_point_kinds():
            with torch.random.fork_rng(devices=devices):
                baseline = evaluator.baseline(kind)
            self.state.history.append({"stage": "baseline", "epoch": 0, "baseline": baseline})
            mean = mean_metrics(baseline["results"])
            note = " (uses class names)" if baseline.get("uses_class_names") else ""
            self.accelerator.print(f"[starting point: {kind.replace('_', ' ')}{note}] "
                                   + ", ".join(f"{k}={v:.2f}" for k, v in mean.items()))
        if self.accelerator.is_main_process:
            write_records(self.output_dir, self.state.history)


LABEL_FREE_CRITERION = (
    "epoch with the best mean pseudo-label P@1 across domains: the share of queries whose top-1 neighbour in "
    "another domain has the same aligned cluster id (uses no labels)"
)


def build_summary(history: Sequence[Mapping[str, Any]], *, first_k: int, domain_names: Sequence[str],
                  setup_warnings: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """The run's summary: last-epoch results, the baseline, the label-free and oracle-best epochs.

    Args:
        history: The training state's records.
        first_k: The first P@k cut-off: the oracle-best epoch has the best mean P@first_k, and the
            run is flagged when its last mean P@first_k is not above the baseline's.
        domain_names: Domain names in dataset order.
        setup_warnings: Warnings raised before training (e.g. a domain too small for the config),
            listed first in ``warnings``.
        **extra: Further entries (wall time, process count, config).
    """
    evaluated = [r for r in history if "results" in r and r["stage"] == "synergy"]
    if not evaluated:
        raise RuntimeError("No evaluation was recorded: the run's hooks need an EvaluationHook (the config's "
                           "hooks have one) and its synergy stage at least one epoch")
    key = f"precision_at_{first_k}"
    best = max(evaluated, key=lambda r: mean_metrics(r["results"])[key])
    scored = [r for r in evaluated if r.get("label_free_score") is not None]
    label_free = max(scored, key=lambda r: r["label_free_score"]) if scored else None
    starting_points = {r["baseline"]["kind"]: {**r["baseline"], "mean": mean_metrics(r["baseline"]["results"])}
                       for r in history if "baseline" in r}
    # the run's own starting point: its frozen pretrained features, else raw pixels (never the class-name one);
    # "pretrained_features" is that kind's name in runs checkpointed by the previous release (resume)
    baseline = next((starting_points[k] for k in ("frozen_features", "pretrained_features", "raw_pixels")
                     if k in starting_points), None)
    clusterings = [r for r in history if "clustering" in r]
    repairs = [r["repair"] for r in history if "repair" in r and r["repair"]["repair"] == "total"]
    last = evaluated[-1]["results"]
    warnings = list(setup_warnings)
    trained = mean_metrics(last)[key]
    for point in ([baseline] if baseline is not None else []) + [starting_points.get("clip_zero_shot")]:
        if point is None or trained > point["mean"][key]:
            continue
        name = point["kind"].replace("_", " ")
        warnings.append(
            f"the trained embedding does not beat its starting point ({name}): mean {key} {trained:.2f} vs "
            f"{point['mean'][key]:.2f}. " + (
                "The CLIP alone, given the class names, retrieves better: use it, or see docs/configuration.md."
                if point["kind"] == "clip_zero_shot" else
                "See docs/configuration.md for the options that matter for your data (augmentations, schedule, "
                "pretrained weights)."))
    return {
        "domains": list(domain_names),
        "last": last,
        "last_epoch": evaluated[-1]["epoch"],
        "baseline": baseline,
        "starting_points": starting_points,
        "prompt_repair": repairs[-1] if repairs else None,
        "warnings": warnings,
        "label_free_best": None if label_free is None else {
            "criterion": LABEL_FREE_CRITERION,
            "epoch": label_free["epoch"],
            "score": label_free["label_free_score"],
            **label_free["results"],
        },
        "oracle_best": {
            "note": f"epoch with the best mean {key} over directions; uses test labels (oracle)",
            "epoch": best["epoch"],
            **best["results"],
        },
        "pseudo_label_nmi": clusterings[-1]["clustering"]["nmi"] if clusterings else None,
        "clustering": [{"stage": r["stage"], "epoch": r["epoch"], **r["clustering"]} for r in clusterings],
        # Kept for scripts reading earlier summaries: the baseline's results when it is raw pixels.
        "raw_pixel_baseline": starting_points["raw_pixels"]["results"] if "raw_pixels" in starting_points else None,
        **extra,
    }


def write_summary(output_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary.json`` and print the final table beside the baseline."""
    atomic_write_text(Path(output_dir) / "summary.json", json.dumps(summary, indent=2))
    baseline = summary["baseline"]
    print(format_table(summary["last"], baseline=baseline["results"] if baseline else None,
                       baseline_label="start" if baseline is None else f"({baseline['kind'].replace('_', ' ')})"))


def export_model(accelerator, model, output_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """Save the trained TPSNet under ``output_dir/model``: ``model.safetensors`` and its ``config.json``
    (:func:`~tpsnet_plugin.models.pretrained.pretrained_config`), which is all
    :meth:`TPSNet.from_pretrained <tpsnet_plugin.models.TPSNet.from_pretrained>` needs."""
    folder = Path(output_dir) / "model"
    accelerator.save_model(model, folder)
    save_config(folder, config)
    return folder
