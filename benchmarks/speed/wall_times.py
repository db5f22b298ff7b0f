"""Wall time of the README's two commands, each on its own fresh clone, install included.

    python -m benchmarks.speed.wall_times [--commands demo test] [--out benchmarks/results/wall_times.json]

Clones the repository (its committed state) into a temporary folder per command, runs
``make <command>`` there with the Makefile's defaults and records the seconds, the exit status
and the machine (cores, load before the start). The README's table of these times is generated
from the JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR, write_json

ROOT = Path(__file__).resolve().parents[2]


def time_command(command: str) -> dict:
    with tempfile.TemporaryDirectory() as work:
        clone = Path(work) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        start = time.perf_counter()
        result = subprocess.run(["make", command], cwd=clone, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    # pip's warnings go to stderr; what the command reports (a test summary, a traceback) to stdout
    return {"seconds": round(seconds, 1), "returncode": result.returncode,
            "stdout_tail": result.stdout.strip().splitlines()[-8:],
            "stderr_tail": [line for line in result.stderr.strip().splitlines() if "is ignored" not in line][-8:]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", nargs="+", default=["demo", "test"], choices=["demo", "test"])
    parser.add_argument("--out", default=str(RESULTS_DIR / "wall_times.json"))
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    results = {}
    for command in args.commands:
        results[command] = time_command(command)
        print(f"make {command}: {results[command]['seconds']:.0f} s, exit status {results[command]['returncode']}")
    write_json(Path(args.out), {"commit": commit, "commands": results})
    return results


if __name__ == "__main__":
    main()
