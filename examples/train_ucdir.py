"""Train and evaluate TPSNet for unsupervised cross-domain image retrieval.

The example the design names; the same command is installed as ``tpsnet-train`` and runs as
``python -m tpsnet_plugin.train`` (see :mod:`tpsnet_plugin.train` for every flag)::

    accelerate launch examples/train_ucdir.py                      # embedded Digits recipe, CPU
    accelerate launch examples/train_ucdir.py --config office_home --data-root /data/OfficeHome --domains Art Real_World
    accelerate launch examples/train_ucdir.py --set model.text_prior=false   # ablation
    accelerate launch examples/train_ucdir.py --output-dir outputs/run --resume
    accelerate launch examples/train_ucdir.py --output-dir outputs/run --overwrite   # replace a finished run

Every config option is listed, with its default, in tpsnet_plugin/training/default_config.yaml.
"""

from __future__ import annotations

import sys

from tpsnet_plugin import train
from tpsnet_plugin.train import config_path, main, parse_args  # noqa: F401  (the command's parts, for callers)


def cli(argv=None) -> int:
    """The training command, named after this script in its messages."""
    return train.cli(argv, prog="train_ucdir")


if __name__ == "__main__":
    sys.exit(cli())
