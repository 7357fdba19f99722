"""A study's grid points on a Ray cluster (`study ... --backend ray`): every point a Ray task of one
CPU, spread over the cluster's nodes, all submitted at once; the results come back as the tasks
complete, for studies/grid.py to keep one by one. A point is a whole simulation on the local engine,
rebuilt in the task from the plain inputs `run` carries (node/sim/ray_backend.py shards one simulation
instead). The session is ray_backend's: the cluster at an address, or one started on loopback."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from manymodels.node.sim.ray_backend import ray_session, where_this_runs


def run_on_ray(run: Callable[[dict], dict], points: list[dict], address: str | None
               ) -> Iterator[tuple[dict, dict, dict]]:
    """(point, result, where it ran and its CPU seconds) for every point, in the order they complete."""
    if not points:
        return
    with ray_session(address) as ray:
        task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_run_point)
        waiting = {task.remote(run, point): point for point in points}
        while waiting:
            [ready], _ = ray.wait(list(waiting), num_returns=1)
            try:
                result, where = ray.get(ready)
            except ray.exceptions.RayTaskError as exc:  # the point's own error, as the local engine raises it
                raise exc.cause from None
            yield waiting.pop(ready), result, where


def _run_point(run: Callable[[dict], dict], point: dict) -> tuple[dict, dict]:
    cpu = time.process_time()
    result = run(point)
    return result, {**where_this_runs(), "cpu_seconds": time.process_time() - cpu}
