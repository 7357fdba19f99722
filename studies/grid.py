"""A study is a grid of simulations plus an analysis; this runs the grid.

Each point's result is written to the study's results file as soon as it is known (atomically), so an
interrupted study picks up where it stopped: a rerun with the same study and settings reads the points
already done and runs only the rest. A results file written with other settings is refused rather than
mixed in. Points and results are JSON objects; a point is known by its canonical JSON text.

Where the points run, `backend`: one after another in this process (`local`), or all at once as Ray
tasks spread over a Ray cluster (`ray`, studies/ray_grid.py), each result kept as it comes. For Ray,
`run` travels to other processes: a module's function, or a functools.partial of one over plain inputs
(configs, settings, file paths), from which each point rebuilds what it needs there. A point is
deterministic for its seed, so both backends give the same results."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from manymodels.node.runtime.store import atomic_write
from manymodels.node.spec import SpecError

OnPoint = Callable[[int, int, dict], None]  # (points done, points in all, the point just done or resumed)
Ran = Iterator[tuple[dict, dict, dict | None]]  # (point, its result, where it ran: None in this process)


@dataclass(frozen=True)
class Grid:
    results: list[dict]  # each point's, in the order of the points
    run: int  # the points run now; the others came from the results file
    cpu_seconds: float = 0.0  # the CPU time of the points run in other processes (on Ray)
    ray_nodes: dict[str, dict] = field(default_factory=dict)  # on Ray: each Ray node's address and points run


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def run_grid(study: str, settings: dict, points: Sequence[dict], run: Callable[[dict], dict],
             results: Path | None = None, on_point: OnPoint | None = None, backend: str = "local",
             address: str | None = None) -> Grid:
    """Each point's result; `run(point)` is called only for points the results file does not hold yet,
    where `backend` says (on Ray: the cluster at `address`, node/sim/ray_backend.py's ray_session).
    `settings` (JSON) is what makes two runs the same study; `on_point` follows the points in the
    order they are known: those resumed, then each as it is done."""
    done = _read(results, study, settings) if results else {}
    resumed = [p for p in points if point_key(p) in done]
    pending = [p for p in points if point_key(p) not in done]
    for k, point in enumerate(resumed):
        if on_point:
            on_point(k + 1, len(points), point)
    known, cpu, where_ran = len(resumed), 0.0, []
    for point, result, where in _ran(run, pending, backend, address):
        done[point_key(point)] = result
        if results:
            _write(results, study, settings, points, done)
        known += 1
        if on_point:
            on_point(known, len(points), point)
        if where:
            cpu += where["cpu_seconds"]
            where_ran.append((where["ray_node"], where["address"]))
    return Grid([done[point_key(p)] for p in points], len(pending), round(cpu, 1),
                {node: {"address": ip, "points": n} for (node, ip), n in Counter(where_ran).items()})


def _ran(run: Callable[[dict], dict], points: list[dict], backend: str, address: str | None) -> Ran:
    if backend == "ray":
        from .ray_grid import run_on_ray

        return run_on_ray(run, points, address)
    return ((point, run(point), None) for point in points)


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
