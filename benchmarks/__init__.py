"""Measurements of the package, run from a checkout as modules (``python -m benchmarks.<part>.<name>``).

- ``speed``: time and memory (evaluation, clustering, losses, training steps and stages, a
  DomainNet-size pipeline pass, the README's two commands);
- ``quality``: retrieval-quality studies (variants over seeds) and their centred starting points;
- ``diagnostics``: tools that explain one finished trainer run (confusions, parts of the embedding);
- ``report_tables``: regenerates the README's and docs' result tables from the JSONs;
- ``_common``: the helpers they share (command line, timing, peak memory, JSON output).

    python -m benchmarks.speed.bench_eval --quick        # one measurement, printed and written as JSON
    python -m benchmarks.quality.quality_digits --config configs/digits.yaml --seeds 0 1 2

Results go to ``benchmarks/results/`` (superseded ones to ``results/archive/``); docs/benchmarks.md
and docs/results.md report them.
"""
