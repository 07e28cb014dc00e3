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
