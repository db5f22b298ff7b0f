"""Retrieval-quality studies: ``python -m benchmarks.quality.<name>``.

``quality_digits`` trains variants over seeds on any config; ``rederive_baselines`` evaluates the
starting points of older studies the way the trained embeddings are evaluated. Reported in
docs/results.md; results in ``benchmarks/results/``.
"""
