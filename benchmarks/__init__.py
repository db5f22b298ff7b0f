"""Speed, memory and quality measurements, run from a checkout as modules.

    python -m benchmarks.bench_eval --quick        # one measurement, printed and written as JSON
    python -m benchmarks.quality_digits --config configs/digits.yaml --seeds 0 1 2

Results go to ``benchmarks/results/``; docs/benchmarks.md and docs/results.md report them.
"""
