"""docs/tour.ipynb runs from top to bottom (where the ``docs`` extra is installed: nbclient and
ipykernel), on the real MNIST files when numpyvit finds them and on its own images otherwise.

Its four exercises are run with their hidden solutions in place (each checker must then say
"correct"), and each checker must refuse the exercise as the learner finds it (not written yet)."""
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

# the lines that report gradient checks, pins and exercises, and every number printed on them as
# 1.2e-09 (any exponent: an error of 2.0e+00 fails too)
CHECKED = ("linear", "patch embed", "tokens", "layernorm", "attention", "mlp", "loss", "logits", "exercise")
ERROR = re.compile(r"\d\.\de[+-]\d\d")
TOUR = Path(__file__).resolve().parents[1] / "docs" / "tour.ipynb"
EXERCISES = {1: "check_layernorm_backward", 2: "check_softmax_backward", 3: "check_attention_row_sum",
             4: "check_adamw"}


def cells_tagged(notebook, prefix):
    return {int(tag.split("-")[1]): cell for cell in notebook.cells
            for tag in cell.metadata.get("tags", []) if tag.startswith(prefix)}


def with_solutions(notebook):
    """The notebook with every exercise cell's code replaced by its hidden solution."""
    solutions = cells_tagged(notebook, "solution-")
    for number, cell in cells_tagged(notebook, "exercise-").items():
        cell.source = solutions[number].source
    return notebook


def test_tour_runs_and_its_checks_pass(capsys):
    notebook = nbformat.read(TOUR, as_version=4)
    assert sorted(cells_tagged(notebook, "exercise-")) == sorted(cells_tagged(notebook, "solution-")) == [1, 2, 3, 4]
    start = time.perf_counter()
    nbclient.NotebookClient(with_solutions(notebook), timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(TOUR.parent)}}).execute()
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ndocs/tour.ipynb executed in {seconds:.1f} s")
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    checks = [line for line in text.splitlines() if line.startswith(CHECKED)]
    errors = [float(number) for line in checks for number in ERROR.findall(line)]
    # mlp: three activations; logits: the pin and the whole-ViT check; four exercises
    assert len(checks) == len(CHECKED) + 2 + 1 + 3 and len(errors) >= 30, "\n".join(checks)
    assert max(errors) < 1e-6, "\n".join(checks)                    # every gradient check, pin and exercise
    assert text.count(": correct (relative errors") == 4
    assert "without the term through rstd: dx relative error" in text   # the broken backward, shown failing
    assert "test accuracy" in text and "(B, T, D)" in text            # the run, the shape trace
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 3                                            # the patches, the curves, attention
    assert seconds < 60


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_each_checker_refuses_the_exercise_until_it_is_written(number):
    sys.path.insert(0, str(TOUR.parent))
    import numpy as np
    import tour_checks

    notebook = nbformat.read(TOUR, as_version=4)
    namespace = {"np": np}
    exec(cells_tagged(notebook, "exercise-")[number].source, namespace)   # the stub, as the learner finds it
    learner, = [value for name, value in namespace.items() if name.startswith("my_")]
    with pytest.raises(AssertionError, match=f"exercise {number} is not written yet"):
        getattr(tour_checks, EXERCISES[number])(learner)
    exec(cells_tagged(notebook, "solution-")[number].source, namespace)
    learner, = [value for name, value in namespace.items() if name.startswith("my_")]
    getattr(tour_checks, EXERCISES[number])(learner)                     # the solution passes
