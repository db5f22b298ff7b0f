"""Shared helpers of the benchmark scripts: timing medians, extra peak RSS, tables, JSON output.

Peak memory is measured as *extra peak RSS*: before a case, Python garbage is collected and glibc
is asked to return freed heap pages to the OS (``malloc_trim``), the process RSS is read as the
baseline, and a background thread samples the RSS every ``interval`` seconds while the case runs.
The reported value is ``max(sampled RSS) - baseline``. Sampling can miss a spike shorter than the
interval (2 ms by default), so it is a slight under-estimate for very short cases; it counts every
allocation (numpy, torch, faiss, BLAS buffers), not just torch's.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).parent / "results"


def result_file(name: str) -> Path:
    """A result JSON by name: in ``benchmarks/results/``, or archived in its ``archive/`` folder."""
    path = RESULTS_DIR / f"{name}.json"
    return path if path.exists() else RESULTS_DIR / "archive" / f"{name}.json"
MIB = 2**20
# The load before this benchmark started (imported first thing by every benchmark): other work on the
# machine, which skews timings and ratios.
LOAD_AT_START = os.getloadavg()
# A 1-minute load above this share of the cores before the start marks a busy machine.
BUSY_SHARE = 0.5


def parse_args(name: str, description: str, device: bool = False,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The command line every benchmark takes: ``--quick``, ``--out``, ``--threads``.

    Args:
        name: Benchmark name; the default output is ``benchmarks/results/<name>.json``.
        description: Help text of the script.
        device: Also take ``--device`` (cpu | cuda) and ``--amp`` (bf16 autocast), for benchmarks
            that can run on a GPU.
        add_arguments: Adds the script's own options to the parser.
    """
    parser = argparse.ArgumentParser(description=description)
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda")
        parser.add_argument("--amp", action="store_true", help="bf16 autocast (the usual GPU training setting)")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds): a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help="where to write the JSON results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and faiss threads (default: their own default, all cores); "
                             "1 is steadier on a loaded machine, where 2-thread OpenMP barriers "
                             "can stall small ops many times over")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    return args


def machine_facts() -> dict[str, Any]:
    """CPU count and model, GPU, library versions, date and load average, for the JSON header."""
    import numpy
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    return {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "load_average_at_start_1_5_15": [round(v, 2) for v in LOAD_AT_START],
        "busy_at_start": busy_at_start(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "faiss": faiss_version,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _trim_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS so the RSS baseline is honest."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager measuring the extra peak RSS of its block, in MiB (see module docstring).

    Args:
        interval: Seconds between RSS samples of the background thread.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.extra_mib = 0.0
        self._process = psutil.Process()

    def __enter__(self) -> PeakRSS:
        _trim_heap()
        self._baseline = self._process.memory_info().rss
        self._peak = self._baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._peak = max(self._peak, self._process.memory_info().rss)
        self._stop.set()
        self._thread.join()
        self.extra_mib = (self._peak - self._baseline) / MIB


def busy_at_start() -> bool:
    """Whether other work loaded the machine when the benchmark started (see :data:`BUSY_SHARE`)."""
    return LOAD_AT_START[0] > BUSY_SHARE * (os.cpu_count() or 1)


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed under :class:`PeakRSS`.

    Args:
        fn: The case; its return value of the last run is kept in ``"value"``.
        repeats: Timed runs; the median is reported.
        warmup: Untimed runs first (import, allocator and kernel warm-up).

    Returns:
        ``{"median_s", "times_s", "repeats", "warmup", "extra_peak_mib", "value"}``; the peak is
        the largest over the timed runs.
    """
    for _ in range(warmup):
        fn()
    times, peak, value = [], 0.0, None
    for _ in range(repeats):
        value = None  # free the previous result before the baseline is read
        with PeakRSS() as rss:
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        peak = max(peak, rss.extra_mib)
    return {"median_s": statistics.median(times), "times_s": times, "repeats": repeats,
            "warmup": warmup, "extra_peak_mib": peak, "value": value}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: floats with 3 significant decimals, columns right-aligned.

    Args:
        headers: Column titles.
        rows: One sequence of cells per row.
    """
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return "-" if value is None else str(value)

    lines = [list(map(str, headers))] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = ["  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])])
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``{"machine": machine_facts(), **payload}`` to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_facts(), **payload}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    if busy_at_start():
        print(f"NOTE: the machine was busy when this started (load {LOAD_AT_START[0]:.2f} on {os.cpu_count()} "
              "cores): its timings and ratios may be off; rerun on an idle machine to compare")


def resume_run(run: Path):
    """A ``TPSNetTrainer`` restored from the latest checkpoint of the trainer run in ``run``.

    Exits with a message naming the problem when ``run`` is not a run's output_dir or holds no
    checkpoint (the diagnosis scripts take run folders from the command line).
    """
    import sys

    import yaml

    from tpsnet_plugin.training import TPSNetTrainer

    config_file = run / "config.yaml"
    if not config_file.is_file():
        sys.exit(f"{config_file} does not exist: {run} must be the output_dir of a trainer run")
    config = yaml.safe_load(config_file.read_text())
    config["accelerate"]["log_with"] = "none"
    trainer = TPSNetTrainer(config)
    if not trainer.resume():
        sys.exit(f"no checkpoint in {run / 'checkpoints'}")
    return trainer
