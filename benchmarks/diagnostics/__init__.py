"""Tools that explain a finished trainer run: ``python -m benchmarks.diagnostics.<name> ...``.

``confusions_digits`` lists the classes each retrieval direction confuses; ``embedding_parts``
evaluates the parts of the embedding (fused, RGB, phase) separately. They take run folders
(the trainer's ``output_dir``) and use labels.
"""
