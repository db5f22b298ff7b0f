"""A CSV tracker for Accelerate, used when TensorBoard is not installed."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process


class CSVTracker(GeneralTracker):
    """Append ``step,name,value`` rows to ``<logging_dir>/<run_name>.csv``.

    Args:
        run_name: File stem of the CSV file.
        logging_dir: Folder for the file (created when missing).
    """

    name = "csv"
    requires_logging_directory = True

    @on_main_process
    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.run_name = run_name
        # The folder is created on the first row, so building a tracker writes nothing.
        self.path = Path(logging_dir) / f"{run_name}.csv"

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """Hyper-parameters go to the run's resolved config file, not the CSV."""

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["step", "name", "value"])
            for key, value in values.items():
                writer.writerow([step, key, value])
