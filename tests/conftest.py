"""Fixtures shared by the whole suite: the repository root and the tiny Digits run of the end-to-end tests.

The factories are session-scoped so that module-scoped fixtures (one trained run shared by a module's tests)
can use them. Tests marked ``slow`` (end-to-end runs and subprocesses) are skipped by ``make test-fast``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A few seconds of training on 2 x 96 Digits images at 16 px: every stage runs, every epoch is evaluated.
TINY = (
    "data.subset_per_domain=96",
    "data.image_size=16",
    "model.phase_kwargs={widths: [8, 8, 16, 16]}",
    "model.rgb_kwargs={widths: [8, 16, 16, 32]}",
    "warmup.epochs=1",
    "warmup.batch_size=64",
    "cluster.nredo=1",
    "cluster.niter=5",
    "prompts.epochs=2",
    "prompts.repair_every=1",
    "synergy.epochs=3",
    "synergy.batch_size=32",
    "eval.every=1",
    "eval.batch_size=40",
    "eval.plots=false",
    "accelerate.log_with=none",
)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny run's ``--set`` overrides of ``configs/digits.yaml`` (one list for the session: extend a copy)."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(tmp_path, *extra)``: the tiny run's config, ``extra`` overrides last, into ``tmp_path/run``."""
    from tpsnet_plugin.training import load_config

    def make(tmp_path, *extra):
        return load_config(REPO / "configs" / "digits.yaml", [*TINY, *extra], output_dir=str(tmp_path / "run"))

    return make


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(tmp_path, *extra, launcher=(python,), **popen)``: the tiny run through ``examples/train_ucdir.py``.

    ``extra`` holds ``--flags`` and ``key=value`` overrides (set after the tiny ones); the output goes to
    ``tmp_path/run``. Returns the started ``subprocess.Popen`` (stdout and stderr together, as text).
    """

    def start(tmp_path, *extra, launcher=(sys.executable,), **popen):
        flags = [item for item in extra if item.startswith("--")]
        args = [*launcher, str(REPO / "examples" / "train_ucdir.py"), "--output-dir", str(tmp_path / "run"), *flags]
        for item in [*TINY, *(item for item in extra if not item.startswith("--"))]:
            args += ["--set", item]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)

    return start
