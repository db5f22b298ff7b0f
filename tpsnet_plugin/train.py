"""Train and evaluate TPSNet for unsupervised cross-domain image retrieval (the ``tpsnet-train`` command).

    tpsnet-train                                          # the embedded Digits recipe, CPU
    tpsnet-train --config digits4                         # a packaged recipe, by name
    tpsnet-train --config my_run.yaml --data-root /data/OfficeHome --domains Art Real_World
    tpsnet-train --data-root DIR --domains A B            # your folders, the generic recipe
    tpsnet-train --set model.text_prior=false             # any option
    tpsnet-train --output-dir outputs/run --resume        # continue a stopped run
    accelerate launch -m tpsnet_plugin.train --config digits4   # under Accelerate (several processes)

Recipes ship with the package (``--config NAME``; ``--list-configs`` lists them); a path names
your own YAML file, which states only what differs from the defaults. Every option is listed,
with its default, in ``tpsnet_plugin/training/default_config.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .errors import TPSNetError
from .training import TPSNetTrainer, load_config
from .training.config import ConfigError, read_composed_config
from .training.run_dir import TrainingInterrupted, stop_on_signals
from .utils.cli import positive_int, report_user_error

RECIPES_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_RECIPE = "digits"  # the embedded Digits data
FOLDER_RECIPE = "folder"  # any folder dataset (--data-root without --config)


def recipes() -> list[str]:
    """Names of the packaged recipes (``--config NAME``); bases other recipes start from (``_*.yaml``) aside."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml") if not path.stem.startswith("_"))


def recipe_path(name_or_path: str | Path) -> Path:
    """The YAML file of ``--config``: an existing file, else a packaged recipe's name.

    Raises:
        ConfigError: Neither a file nor a recipe; the message lists the recipes.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    recipe = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and recipe.is_file():
        return recipe
    raise ConfigError(f"--config {name_or_path}: no such file, and no packaged recipe of that name "
                      f"(recipes: {', '.join(recipes())})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a packaged recipe's name or a YAML file (default: folder with "
                                         "--data-root, else digits)")
    parser.add_argument("--list-configs", action="store_true", help="list the packaged recipes and exit")
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
        return recipe_path(args.config)
    return recipe_path(FOLDER_RECIPE if args.data_root else DEFAULT_RECIPE)


def main(argv=None) -> dict:
    """Build the config from the command line and train; returns the run's summary."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Train as the parsed command line asks; returns the run's summary (``{}`` for ``--list-configs``)."""
    if args.list_configs:
        print("\n".join(recipes()))
        return {}
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


def where_set(option: str, args: argparse.Namespace) -> str:
    """Where a run's value of ``option`` came from: a --set, the config file, or the defaults."""
    if any(item.split("=", 1)[0].strip() == option for item in args.overrides):
        return "--set"
    try:
        path = config_path(args)
        section, _, key = option.partition(".")
        in_file = key in (read_composed_config(path).get(section) or {})
    except (OSError, ValueError):
        return "the config"
    if not in_file:
        return "the defaults"
    return f"the recipe '{path.stem}' ({path})" if path.parent == RECIPES_DIR else str(path)


# Errors that are the user's to fix: one message, no traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (TPSNetError, OSError, yaml.YAMLError)


def cli(argv=None, prog: str = "tpsnet-train") -> int:
    """Run :func:`main` as a command: one-line errors and an exit status instead of tracebacks."""
    stop_on_signals()
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt as stop:  # TrainingInterrupted: its message says what is kept and how to go on
        reason = str(stop) if isinstance(stop, TrainingInterrupted) else "interrupted"
        if "--output-dir" not in reason:  # not from a run's fit: stopped while setting up
            reason += " before training started; nothing was written"
        print(f"{prog}: {reason}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        option = getattr(error, "option", None)
        where = f"{option} is set in {where_set(option, args)}" if option and not args.debug else ""
        return report_user_error(prog, error, args.debug, where)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
