"""The plain-pml example runs end to end and evaluates with the UCDIR calculator."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pml_pipeline.py"


def test_pml_pipeline_runs_and_reports_ucdir_metrics():
    spec = importlib.util.spec_from_file_location("pml_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metrics = module.main(["--steps", "5"])
    assert set(metrics) == {"precision_at_1", "precision_at_5", "precision_at_15", "map_at_all"}
    assert all(0 <= value <= 100 for value in metrics.values())
