"""The README's two commands are the ones CI runs, so CI proves the README."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci_command(name):
    match = re.search(rf"^{name}='(.+)'$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert match, f".ci/run defines no {name}='...' command"
    return match.group(1)


def test_readme_shows_the_install_and_test_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    for name in ("INSTALL", "TEST"):
        assert ci_command(name) in readme, f"README.md lacks CI's {name} command: {ci_command(name)}"


def test_readme_quickstart_trains_with_the_demo():
    assert "python demos/train_mnist.py" in (ROOT / "README.md").read_text()


def test_the_readme_stays_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250   # the long tables live in docs/


def test_every_relative_link_of_the_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [f"{page.name}: {target}" for page in pages
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://", "mailto:"))
              and not (page.parent / target).exists()]
    assert not broken, broken


def test_every_table_of_the_docs_stands_apart_from_its_text():
    """GitHub's Markdown takes a line of text right after a table as one more row of it: a blank
    line must come before and after every table (code blocks aside)."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    glued = []
    for page in pages:
        lines, in_code = page.read_text().splitlines(), False
        for number, (line, after) in enumerate(zip(lines, lines[1:]), start=1):
            in_code ^= line.startswith("```")
            if not in_code and after.strip() and line.strip() and line.startswith("|") != after.startswith("|"):
                glued.append(f"{page.name}:{number + 1}: {after[:50]}")
    assert not glued, glued
