"""The experiments' records: the histories kept under docs/experiments/histories/ are the numbers
docs/results.md reports (redrawn by docs/experiments/mae_fashion_curves.py), so the two cannot drift."""
import json
import re
import shutil
from pathlib import Path

import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "docs" / "experiments" / "histories").iterdir())


@pytest.fixture(scope="module")
def curves():
    return load_script("docs/experiments/mae_fashion_curves.py")


def test_there_are_records():
    assert RECORDS, "docs/experiments/histories/ holds no experiment"


@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_results_md_reports_the_recorded_runs(record, curves, tmp_path, capsys):
    assert curves.main(["--runs", str(record), "--out", str(tmp_path / "curves.png")]) == 0
    out = capsys.readouterr().out
    assert "not finished" not in out
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    results = (ROOT / "docs" / "results.md").read_text().replace("**", "")   # bold aside
    routes = [line for line in out.splitlines() if re.search(r", seeds? \d", line)]
    assert routes
    for line in routes:
        for accuracies in line.split(" | ")[1:3]:     # on the image alone, with TTA: "a / b / c%, mean m%" or "a%"
            assert accuracies.rstrip("%") in results, f"docs/results.md lacks {record.name}'s {accuracies}"


def test_an_unfinished_run_is_left_out_and_an_empty_folder_refused(curves, tmp_path, capsys):
    source = next(path for path in RECORDS[0].glob("scratch-*"))
    history = json.loads((source / "history.json").read_text())
    (tmp_path / "scratch-0").mkdir()
    (tmp_path / "scratch-0" / "history.json").write_text(json.dumps(dict(history, epochs=history["epochs"][:2])))
    assert curves.main(["--runs", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    captured = capsys.readouterr()
    assert "scratch-0: not finished" in captured.out and "no finished runs" in captured.err
    shutil.copy(source / "history.json", tmp_path / "scratch-0" / "history.json")
    assert curves.main(["--runs", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert "| from scratch, seed 0 | " in capsys.readouterr().out
