"""Speed and memory benchmarks: ``python -m benchmarks.speed.<name> [--quick] [--threads N] [--out FILE]``.

Reported in docs/benchmarks.md; results in ``benchmarks/results/<name>.json``.
"""
