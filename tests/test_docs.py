"""The project's documents: the command-line reference is the commands', the README gives the two commands of
a fresh machine and stays short, links resolve, and the project's text speaks of the project, not of how it
was made."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "docs" / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_current():
    """docs/cli.md is what `python docs/generate_cli.py` writes from the commands: a new or changed option
    without a regenerated reference fails here."""
    generated = _generator().reference()
    assert (ROOT / "docs" / "cli.md").read_text() == generated, (
        "docs/cli.md is stale: run python docs/generate_cli.py"
    )
    for command in ("iic train", "iic eval retrieval", "iic-prep extract", "iic selfcheck", "iic presets"):
        assert f"## `{command}`" in generated
    assert "`--print-config`" in generated and "`--K`" in generated  # generated options are listed too


def test_the_readme_gives_the_two_commands_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert len(text.splitlines()) <= 150


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        files = [ROOT / n for n in names.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the environment's
        files = [
            p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts
        ]
    return [p for p in files if p.suffix in (".md", ".py", ".toml", ".cfg", ".txt", "") and p.is_file()]


def test_links_between_documents_resolve():
    for doc in [p for p in _tracked_text_files() if p.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"


# How a text would speak of the way it was made rather than of the project.
PROCESS_TALK = re.compile(r"\bsession[s]? \d+|\bthe issue('s)?\b|\bissue \d+|REFERENCE\.md", re.IGNORECASE)


def test_the_project_speaks_of_itself():
    this = Path(__file__).resolve()
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
        for p in _tracked_text_files()
        if p.resolve() != this
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if PROCESS_TALK.search(line)
    ]
    assert not found, "text about how the project was made:\n" + "\n".join(found[:20])


# A reference to a part of a document by its title: BENCHMARKS.md, "Camera motion"; method.md ("Departures").
SECTION_REF = re.compile(r'((?:docs/)?[A-Za-z_]+\.md),?\s+\(?"([^"]+)"')


def test_references_to_a_documents_sections_name_them_as_titled():
    """Text that points to a part of a document by its title ("BENCHMARKS.md, \"Learning\"") names words that
    are in that document, so a renamed section cannot leave stale pointers behind."""
    docs = {p.relative_to(ROOT).as_posix(): p for p in _tracked_text_files() if p.suffix == ".md"}
    stale, seen = [], 0
    for p in _tracked_text_files():
        for doc, name in SECTION_REF.findall(p.read_text(errors="replace")):
            target = docs.get(doc) or docs.get(f"docs/{doc}")
            if target is None:
                continue
            seen += 1
            name = " ".join(re.sub(r"\n\s*#", " ", name).split())  # wrapped in a comment
            if name not in " ".join(target.read_text().split()):
                stale.append(f"{p.relative_to(ROOT)}: {doc}, {name!r}")
    assert seen > 20  # the pattern finds the references
    assert not stale, "references to sections that are not there:\n" + "\n".join(stale)
