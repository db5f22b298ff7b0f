"""Which classes a trained Digits model confuses, per retrieval direction (diagnosis, uses labels).

Loads the latest checkpoint of a finished (or interrupted) trainer run, embeds every image as the
trainer's evaluation does (``TPSNetTrainer.embed`` + ``retrieval_features``), and for every
ordered domain pair lists the top-1 errors grouped by (query class -> retrieved class), with the
number of queries of that class. The P@1 printed beside it is the evaluator's
(``TPSNetTrainer.evaluate``), so the two can be checked against each other.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.diagnostics.confusions_digits --run outputs/digits4 [--top 4]
[--out FILE]`` (default ``benchmarks/results/confusions_digits.json``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from benchmarks._common import RESULTS_DIR, resume_run, write_json


def confusions(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, names: list[str],
               top: int) -> dict[str, dict]:
    """Per direction ``"A->B"``: queries, top-1 errors and the ``top`` most frequent class pairs.

    The nearest gallery item is the first of the highest cosines (ties by gallery index, as the
    evaluator breaks them).
    """
    out = {}
    for q, query_name in enumerate(names):
        for g, gallery_name in enumerate(names):
            if q == g:
                continue
            queries, gallery = torch.nonzero(domains == q).flatten(), torch.nonzero(domains == g).flatten()
            nearest = gallery[(features[queries] @ features[gallery].T).argmax(dim=1)]
            wrong = labels[nearest] != labels[queries]
            pairs = Counter(zip(labels[queries][wrong].tolist(), labels[nearest][wrong].tolist()))
            class_counts = Counter(labels[queries].tolist())
            out[f"{query_name}->{gallery_name}"] = {
                "queries": len(queries),
                "errors": int(wrong.sum()),
                "top_confusions": [
                    {"query_class": a, "retrieved_class": b, "count": n, "queries_of_class": class_counts[a]}
                    for (a, b), n in pairs.most_common(top)
                ],
            }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="output_dir of a trainer run (has config.yaml, checkpoints/)")
    parser.add_argument("--top", type=int, default=4, help="class pairs listed per direction")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "confusions_digits.json")
    args = parser.parse_args(argv)
    trainer = resume_run(args.run)
    if trainer.data.true_labels is None:
        sys.exit("the run's dataset has no labels to diagnose with")
    embeddings = trainer.embedder(synergy=trainer.state.stage in ("synergy", "done"))
    results = trainer.evaluator.evaluate(embeddings)
    table = confusions(trainer.evaluator.retrieval_features(embeddings), torch.as_tensor(trainer.data.true_labels),
                       trainer.data.domains, trainer.data.domain_names, args.top)
    for direction, row in table.items():
        row["precision_at_1"] = results[direction]["precision_at_1"]
        pairs = ", ".join(f"{c['query_class']}->{c['retrieved_class']} {c['count']}/{c['queries_of_class']}"
                          for c in row["top_confusions"])
        print(f"{direction:40s} P@1 {row['precision_at_1']:6.2f}  "
              f"errors {row['errors']:5d}/{row['queries']:5d}  {pairs}")
    errors = sum(row["errors"] for row in table.values())
    first = sum(row["top_confusions"][0]["count"] for row in table.values() if row["top_confusions"])
    print(f"most frequent class pair per direction: {first} of {errors} errors ({100 * first / max(errors, 1):.1f}%)")
    report = {"benchmark": "confusions_digits", "run": str(args.run), "stage": trainer.state.stage,
              "epoch": trainer.state.epoch, "directions": table, "errors": errors,
              "errors_in_top_pair_per_direction": first}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
