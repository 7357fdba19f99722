"""Where a simulation runs (`simulate --backend`): `local`, this process (node/sim/simulator.py), or
`ray`, shards of nodes on a Ray cluster (node/sim/ray_backend.py). Both give the same report for a seed."""
from __future__ import annotations

from collections.abc import Callable

from .simulator import run_simulation
from .spec import SimulationConfig, SimulationSpec


def simulate(config: SimulationConfig, on_round: Callable[[int, float], None] | None = None) -> dict:
    """The report of a simulation, run where `config.backend` says; `on_round(round, mean honest
    accuracy)` after each round."""
    if config.backend != "ray":
        return run_simulation(config, on_round)
    from .ray_backend import simulate_on_ray

    return simulate_on_ray(SimulationSpec.parse(config), on_round)[0]
