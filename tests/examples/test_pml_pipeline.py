"""The plain-pml example runs end to end, trains something, and evaluates with the UCDIR calculator."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pml_pipeline.py"


@pytest.mark.slow
def test_pml_pipeline_trains_and_reports_ucdir_metrics():
    spec = importlib.util.spec_from_file_location("pml_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    untrained = module.main(["--steps", "0"])
    trained = module.main(["--steps", "5"])
    assert set(trained) == {"precision_at_1", "precision_at_5", "precision_at_15", "map_at_all"}
    # five optimizer steps of the miner-fed pml loss and the image-text loss move the embedding
    assert trained != untrained
