"""mAP@All: rank counting (default) vs sorting the whole gallery, same data, same process.

    python -m benchmarks.bench_map_paths [--threads 1] [--quick]

Both are in ``tpsnet_plugin.evaluation.average_precision``: ``precision_sums_by_counting``
(binary search of non-relevant similarities among the sorted relevant ones) and
``precision_sums_by_sorting`` (a stable sort of every query block against the gallery, still used
for the VOC variant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401
from benchmarks._common import format_table, machine_facts, measure, parse_args, write_json
from tpsnet_plugin.evaluation.average_precision import precision_sums_by_counting, precision_sums_by_sorting


def main() -> None:
    args = parse_args("bench_map_paths", __doc__)
    size, dim, classes = (1000, 64, 10) if args.quick else (10000, 512, 65)
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, dim, generator=generator)
    query_labels = torch.randint(0, classes, (size,), generator=generator)
    gallery_labels = torch.randint(0, classes, (size,), generator=generator)
    query = F.normalize(centers[query_labels] + 2 * torch.randn(size, dim, generator=generator), dim=1)
    gallery = F.normalize(centers[gallery_labels] + 2 * torch.randn(size, dim, generator=generator), dim=1)
    repeats = 3
    counting = measure(lambda: precision_sums_by_counting(query, gallery, query_labels, gallery_labels), repeats)
    sorting = measure(lambda: precision_sums_by_sorting(query, gallery, query_labels, gallery_labels)["ap"], repeats)
    gemm = measure(lambda: query @ gallery.T, repeats)
    difference = (counting.pop("value") - sorting.pop("value")).abs().max().item()
    gemm.pop("value")
    rows = [
        ["rank counting", counting["median_s"], counting["extra_peak_mib"], counting["median_s"] / gemm["median_s"]],
        ["sorting", sorting["median_s"], sorting["extra_peak_mib"], sorting["median_s"] / gemm["median_s"]],
        ["bare GEMM", gemm["median_s"], gemm["extra_peak_mib"], 1.0],
    ]
    print(f"mAP@All precision sums, {size}x{size}, d={dim}, {classes} classes, median of {repeats}")
    print(format_table(["path", "median s", "extra MiB", "x GEMM"], rows))
    print(f"sorting / counting = {sorting['median_s'] / counting['median_s']:.2f}; "
          f"max |difference| of AP sums {difference:.2e}")
    write_json(args.out, {
        "machine": machine_facts(), "benchmark": "bench_map_paths", "quick": args.quick,
        "setup": {"size": size, "dim": dim, "classes": classes, "threads": args.threads},
        "counting": counting, "sorting": sorting, "gemm": gemm,
        "speedup_sorting_over_counting": sorting["median_s"] / counting["median_s"],
        "max_abs_difference_of_ap_sums": difference,
    })


if __name__ == "__main__":
    main()
