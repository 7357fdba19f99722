"""A study is a grid of simulations plus an analysis; this runs the grid.

Each point's result is written to the study's results file as soon as it is known (atomically), so an
interrupted study picks up where it stopped: a rerun with the same study and settings reads the points
already done and runs only the rest. A results file written with other settings is refused rather than
mixed in. Points and results are JSON objects; a point is known by its canonical JSON text."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from manymodels.node.runtime.store import atomic_write
from manymodels.node.spec import SpecError

OnPoint = Callable[[int, int, dict], None]  # (points done, points in all, the point just done or resumed)


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def run_grid(study: str, settings: dict, points: Sequence[dict], run: Callable[[dict], dict],
             results: Path | None = None, on_point: OnPoint | None = None) -> list[dict]:
    """Each point's result, in the order of `points`; `run(point)` is called only for points the
    results file does not hold yet. `settings` (JSON) is what makes two runs the same study."""
    done = _read(results, study, settings) if results else {}
    out = []
    for k, point in enumerate(points):
        key = point_key(point)
        if key not in done:
            done[key] = run(point)
            if results:
                _write(results, study, settings, points, done)
        out.append(done[key])
        if on_point:
            on_point(k + 1, len(points), point)
    return out


def _read(path: Path, study: str, settings: dict) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        same = saved["study"] == study and saved["settings"] == json.loads(json.dumps(settings))
        points = {point_key(p["point"]): p["result"] for p in saved["points"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"cannot resume from {path}: not a study results file ({exc})") from None
    if not same:
        raise SpecError(f"{path} holds a {saved['study']} study with other settings: "
                        "remove it or write the results elsewhere")
    return points


def _write(path: Path, study: str, settings: dict, points: Sequence[dict], done: dict[str, dict]) -> None:
    ordered = [{"point": p, "result": done[point_key(p)]} for p in points if point_key(p) in done]
    atomic_write(path, json.dumps({"study": study, "settings": settings, "points": ordered}, indent=1).encode(),
                 mode=0o644)
