"""Train and evaluate TPSNet for unsupervised cross-domain image retrieval.

    accelerate launch examples/train_ucdir.py                      # embedded Digits default, CPU, ~5 min
    accelerate launch examples/train_ucdir.py --config configs/office_home.yaml \
        --data-root /data/OfficeHome --domains Art Real_World
    accelerate launch examples/train_ucdir.py --set model.text_prior=false   # ablation
    accelerate launch examples/train_ucdir.py --output-dir outputs/run --resume
    accelerate launch examples/train_ucdir.py --output-dir outputs/run --overwrite   # replace a finished run

Every config option is listed, with its default, in tpsnet_plugin/training/default_config.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tpsnet_plugin.errors import TPSNetError
from tpsnet_plugin.training import TPSNetTrainer, load_config
from tpsnet_plugin.training.config import read_config_file
from tpsnet_plugin.training.run_dir import TrainingInterrupted, stop_on_signals
from tpsnet_plugin.utils.cli import positive_int

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIGS / "digits.yaml"  # the embedded Digits data
FOLDER_CONFIG = CONFIGS / "folder.yaml"  # any folder dataset (--data-root without --config)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        help="YAML config (default: configs/folder.yaml with --data-root, else configs/digits.yaml)")
    parser.add_argument("--data-root", help="dataset root; implies data.dataset=folder")
    parser.add_argument("--domains", nargs="+", help="two or more domain names")
    parser.add_argument("--num-clusters", type=positive_int,
                        help="number of clusters C (default: number of classes found)")
    parser.add_argument("--output-dir", help="where checkpoints, metrics and plots go")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --output-dir (its checkpoints, metrics and model)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config key (repeatable), e.g. --set synergy.epochs=20")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser.parse_args(argv)


def config_path(args: argparse.Namespace) -> Path:
    """The config file of a run: ``--config``, else the generic folder recipe for ``--data-root``, else Digits."""
    if args.config is not None:
        return args.config
    return FOLDER_CONFIG if args.data_root else DEFAULT_CONFIG


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = {}
    if args.data_root:
        data.update(dataset="folder", root=args.data_root)
    if args.domains:
        data["domains"] = args.domains
    if args.num_clusters:
        data["num_clusters"] = args.num_clusters
    sections = {"data": data} if data else {}
    if args.output_dir:
        sections["output_dir"] = args.output_dir
    config = load_config(config_path(args), args.overrides, **sections)
    return TPSNetTrainer(config).fit(resume=args.resume, overwrite=args.overwrite)


# Errors that are the user's to fix: one message, no traceback.
USER_ERRORS = (TPSNetError, ValueError, KeyError, TypeError, OSError, yaml.YAMLError)


def where_set(option: str, args: argparse.Namespace) -> str:
    """Where a run's value of ``option`` came from: a --set, the config file, or the defaults."""
    if any(item.split("=", 1)[0].strip() == option for item in args.overrides):
        return "--set"
    path = config_path(args)
    section, _, key = option.partition(".")
    try:
        in_file = key in (read_config_file(path).get(section) or {})
    except (OSError, ValueError):
        in_file = False
    return str(path) if in_file else "the defaults"


def cli(argv=None) -> int:
    """Run :func:`main` as a command: clean one-line errors and an exit status instead of tracebacks."""
    stop_on_signals()
    args = parse_args(argv)
    try:
        main(argv)
    except KeyboardInterrupt as stop:  # TrainingInterrupted: its message says what is kept and how to go on
        reason = str(stop) if isinstance(stop, TrainingInterrupted) else "interrupted"
        if "--output-dir" not in reason:  # not from a run's fit: stopped while setting up
            reason += " before training started; nothing was written"
        print(f"train_ucdir: {reason}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        option = getattr(error, "option", None)
        if option:
            message = f"{message} ({option} is set in {where_set(option, args)})"
        print(f"train_ucdir: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
