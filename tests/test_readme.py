"""The README documents every config option: its config block is the packaged defaults file."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_default_option():
    defaults = (ROOT / "tpsnet_plugin" / "training" / "default_config.yaml").read_text().rstrip()
    assert defaults in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
