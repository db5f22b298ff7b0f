"""The README's and docs' result tables are the JSONs' numbers: regenerated here, any stale or
hand-edited number fails."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    return importlib.import_module("benchmarks.report_tables")


def test_every_generated_table_matches_its_json(capsys):
    generator = load_generator()
    assert generator.main(["--check"]) == 0, capsys.readouterr().out + " (run python -m benchmarks.report_tables)"
    tables = sum((ROOT / doc).read_text().count("<!-- table: ") for doc in generator.DOCUMENTS
                 if (ROOT / doc).exists())
    assert tables >= 10


def test_a_hand_edited_number_is_caught():
    generator = load_generator()
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- table: summary -->")
    row = text.index("| Digits", start)
    cell = text.index(" ± ", row)
    edited = text[:cell - 1] + ("1" if text[cell - 1] != "1" else "2") + text[cell:]
    assert generator.regenerate(edited) == text


def shown_studies() -> list[str]:
    """The studies the generated tables show."""
    generator = load_generator()
    names = {study for _, study, _, _ in generator.SUMMARY}
    for doc in generator.DOCUMENTS:
        if (ROOT / doc).exists():
            names |= {m.group("spec").split()[1] for m in generator.MARKER.finditer((ROOT / doc).read_text())
                      if m.group("spec").startswith("study ")}
    return sorted(names)


@pytest.mark.parametrize("name", shown_studies())
def test_per_seed_values_average_to_the_recorded_mean(name):
    # the generator reads each seed's last epoch from the curves; their mean must be the study's own aggregate
    generator = load_generator()
    study = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    for name, variant in study["variants"].items():
        if "curves" not in variant:
            continue
        values = generator.seed_values(variant)
        assert len(values) == len(study["seeds"]), name
        assert sum(values) / len(values) == pytest.approx(variant["last"]["mean"]["precision_at_1"][0], abs=1e-6)
