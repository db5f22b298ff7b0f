"""The training command: the generic folder recipe for --data-root without --config, packaged
recipes by name, and the example script as a thin wrapper of the installed command."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tpsnet_plugin import train
from tpsnet_plugin.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "tpsnet_plugin" / "configs"


def load_cli():
    spec = importlib.util.spec_from_file_location("train_ucdir", REPO / "examples" / "train_ucdir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_config_follows_the_data():
    cli = load_cli()
    assert cli.config_path(cli.parse_args([])) == RECIPES / "digits.yaml"
    chosen = cli.config_path(cli.parse_args(["--data-root", "/data/x", "--domains", "a", "b"]))
    assert chosen == RECIPES / "folder.yaml"
    chosen = cli.config_path(cli.parse_args(["--data-root", "/data/x", "--config", "configs/office_home.yaml"]))
    assert chosen == Path("configs/office_home.yaml")


def test_recipes_ship_with_the_package_and_are_chosen_by_name(tmp_path, capsys):
    assert {"digits", "digits4", "folder", "folder_pretrained", "office_home"} <= set(train.recipes())
    assert train.recipe_path("digits4") == RECIPES / "digits4.yaml"
    assert train.recipe_path("digits4.yaml") == RECIPES / "digits4.yaml"
    own = tmp_path / "digits4.yaml"  # a file of the user's wins over the recipe of the same name
    own.write_text("seed: 3\n")
    assert train.recipe_path(own) == own
    with pytest.raises(ConfigError, match=r"--config digit: no such file.*recipes: digits, digits4"):
        train.recipe_path("digit")
    assert train.main(["--list-configs"]) == {}
    assert "folder_pretrained" in capsys.readouterr().out.split()


@pytest.mark.slow
def test_the_module_runs_as_a_command():
    # what `accelerate launch -m tpsnet_plugin.train` and the tpsnet-train console script run
    result = subprocess.run([sys.executable, "-m", "tpsnet_plugin.train", "--list-configs"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "digits" in result.stdout.split()
    result = subprocess.run([sys.executable, "-m", "tpsnet_plugin.train", "--set", "synergy.epochs=ten"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("tpsnet-train: error: Config key 'synergy.epochs'")


def test_a_bug_keeps_its_traceback_and_debug_shows_a_user_error(monkeypatch, capsys):
    # only the project's own errors are one line: a shape bug deep in a loss is not a config error
    def broken(*args, **kwargs):
        raise ValueError("shapes (3,) and (4,) do not match")

    monkeypatch.setattr(train, "TPSNetTrainer", broken)
    with pytest.raises(ValueError, match="shapes"):
        train.cli(["--set", "synergy.epochs=1"])
    assert train.cli(["--set", "synergy.epochs=ten", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err
