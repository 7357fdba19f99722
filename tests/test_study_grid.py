"""studies/grid.py: a study's grid resumes from its results file and refuses one of another study."""
import json

import pytest

from manymodels.node.spec import SpecError
from manymodels.studies.grid import run_grid

POINTS = [{"width": w, "seed": s} for w in (1, 2) for s in (0, 1)]


def test_an_interrupted_grid_resumes_where_it_stopped(tmp_path):
    results, calls = tmp_path / "study.json", []

    def run(point):
        if len(calls) == 2 and not resumed:
            raise KeyboardInterrupt
        calls.append(point)
        return {"risk": point["width"] * 10 + point["seed"]}

    resumed = False
    with pytest.raises(KeyboardInterrupt):
        run_grid("toy", {"n": 1}, POINTS, run, results)
    assert [p["point"] for p in json.loads(results.read_text())["points"]] == POINTS[:2]
    resumed, seen = True, []
    out = run_grid("toy", {"n": 1}, POINTS, run, results, on_point=lambda k, n, p: seen.append((k, n)))
    assert calls == POINTS  # the first two ran once, before the interruption
    assert out.results == [{"risk": 10}, {"risk": 11}, {"risk": 20}, {"risk": 21}] and out.run == 2
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_results_file_of_other_settings_is_refused(tmp_path):
    results = tmp_path / "study.json"
    run_grid("toy", {"n": 1}, POINTS[:1], lambda p: {"risk": 0}, results)
    with pytest.raises(SpecError, match="other settings"):
        run_grid("toy", {"n": 2}, POINTS, lambda p: {"risk": 0}, results)
    results.write_text("not json")
    with pytest.raises(SpecError, match="not a study results file"):
        run_grid("toy", {"n": 1}, POINTS, lambda p: {"risk": 0}, results)
