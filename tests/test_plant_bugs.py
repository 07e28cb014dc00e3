"""tests/plant_bugs.py stays usable: every mutant's text is in its file exactly once (a change to
the code that moves it must update the mutant, or the mutation run stops)."""
import pytest

from plant_bugs import MUTANTS, ROOT


@pytest.mark.parametrize("name, path, old", [(m[0], m[1], m[2]) for m in MUTANTS], ids=[m[0] for m in MUTANTS])
def test_each_mutant_finds_its_text_once(name, path, old):
    assert (ROOT / path).read_text().count(old) == 1, f"{name}: update its text in tests/plant_bugs.py"
