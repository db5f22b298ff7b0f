"""The README and docs/ stay short, linked, and in step with the code and CI."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DEFAULT_CONFIG = ROOT / "tpsnet_plugin" / "training" / "default_config.yaml"
MAX_README_LINES = 250

# Inline links and images, [text](target) / ![alt](target), outside code spans and blocks.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Targets that are not files in this repository.
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def _prose(text: str) -> str:
    """The markdown without fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text()))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _repo_files() -> list[Path]:
    """Tracked files plus untracked ones git does not ignore; a plain walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode()
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "outputs", "runs", "build", "dist", "__pycache__", ".pytest_cache"}
        files = [
            p for p in ROOT.rglob("*")
            if not any(part in skip or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
        ]
    return [p for p in files if p.is_file()]


def _default_options() -> tuple[list[str], dict[str, list[str]]]:
    """Top-level scalar options, and per section its options (nested ones dotted, e.g. loss_weights.prototype)."""

    def flat(section: dict, prefix: str = "") -> list[str]:
        keys = []
        for key, value in section.items():
            # a non-empty mapping is a group of options; an empty one (rgb_kwargs: {}) is an option
            keys.extend(flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key])
        return keys

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    top = [key for key, value in config.items() if not (isinstance(value, dict) and value)]
    sections = {key: flat(value) for key, value in config.items() if isinstance(value, dict) and value}
    return top, sections


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"components.md", "configuration.md", "results.md", "benchmarks.md"} <= names


def test_readme_links_the_default_config_and_every_doc():
    targets = {(README.parent / t.split("#")[0]).resolve() for t in _links(README) if not EXTERNAL.match(t)}
    assert DEFAULT_CONFIG.resolve() in targets, "README must link tpsnet_plugin/training/default_config.yaml"
    for doc in DOCS:
        assert doc.resolve() in targets, f"README does not link {doc.relative_to(ROOT)}"


@pytest.mark.parametrize("path", [README, *sorted((ROOT / "docs").rglob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(path):
    problems = []
    for target in _links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(ROOT.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    assert not problems, f"broken links in {path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_make_test_is_the_documented_and_ci_test_command():
    assert "make test" in README.read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it at most {MAX_README_LINES} and move detail to docs/"
    )


def test_no_file_refers_outside_the_repository():
    # Built from parts so that this file does not match itself.
    needles = [("DESIGN" + ".md").encode(), (".." + "/shared").encode()]
    offenders = [
        f"{p.relative_to(ROOT)}: {needle.decode()}"
        for p in _repo_files()
        for needle in needles
        if needle in p.read_bytes()
    ]
    assert not offenders, "files mention paths outside the repository:\n" + "\n".join(offenders)


def test_configuration_doc_names_every_section_and_option():
    """docs/configuration.md's option index lists every option of default_config.yaml by name."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    top, sections = _default_options()
    missing = [f"`{key}`" for key in top if f"`{key}`" not in text]
    for section, options in sections.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{section}` |")]
        if not rows:
            missing.append(f"the option-index row of section `{section}`")
            continue
        missing.extend(f"`{section}.{option}`" for option in options if f"`{option}`" not in rows[0])
    assert not missing, "docs/configuration.md does not name: " + ", ".join(missing)
