"""Smoke test of the benchmark scripts: each runs with --quick and writes the expected JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"nproc", "cpu_model", "torch", "faiss", "date", "load"}
EXPECTED_KEYS = {
    "bench_eval": {"setup", "headers", "rows", "results", "goals_at_first_size", "notes"},
    "bench_cluster": {"setup", "clustering", "instance_loss"},
    "bench_step": {"setup", "headers", "rows", "results", "parts_s", "profiles",
                   "goal_vit_overhead_le_15pct"},
    "bench_stage1": {"setup", "headers", "rows", "results"},
    "bench_map_paths": {"setup", "counting", "sorting", "gemm", "speedup_sorting_over_counting"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_quick_run_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    # one thread each: on a loaded 2-core machine 2-thread OpenMP barriers can stall tiny ops
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--threads", "1",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert MACHINE_KEYS <= set(result["machine"])
    assert EXPECTED_KEYS[name] <= set(result)
    if name == "bench_eval":
        cases = result["results"]["1000x1000"]
        for key in ("ours knn=auto|P@k + mAP@All", "ours knn=torch|P@k only"):
            assert cases[key]["max_abs_diff_vs_dense"] <= 0.02
            assert cases[key]["median_s"] > 0 and cases[key]["extra_peak_mib"] >= 0
    elif name == "bench_cluster":
        assert all(entry["values_equal"] for entry in result["instance_loss"]["results"].values())
        assert all(0 <= case["ours"]["nmi"] <= 1 for case in result["clustering"]["results"].values())
    elif name == "bench_step":
        timed = result["results"]["test_vit"]
        assert {"RGB alone", "TPSNet (phase+fusion+synergy)"} <= set(timed)
    elif name == "bench_map_paths":
        assert result["max_abs_difference_of_ap_sums"] < 1e-3
        assert result["counting"]["median_s"] > 0 and result["sorting"]["median_s"] > 0
    else:
        assert any(key.startswith("stage 2") for key in result["results"])
        assert all(row[4] > 0 for row in result["rows"])  # seconds per epoch
