"""The training command's config choice: the generic folder recipe for --data-root without --config."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_cli():
    spec = importlib.util.spec_from_file_location("train_ucdir", REPO / "examples" / "train_ucdir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_config_follows_the_data():
    cli = load_cli()
    assert cli.config_path(cli.parse_args([])) == REPO / "configs" / "digits.yaml"
    chosen = cli.config_path(cli.parse_args(["--data-root", "/data/x", "--domains", "a", "b"]))
    assert chosen == REPO / "configs" / "folder.yaml"
    chosen = cli.config_path(cli.parse_args(["--data-root", "/data/x", "--config", "configs/office_home.yaml"]))
    assert chosen == Path("configs/office_home.yaml")
