"""The `make demo` network (8 nodes, digits, Dirichlet 0.5, 20 rounds): wall time and
many models vs alone vs one pooled model, with the 30 s goal on 2 cores."""
from __future__ import annotations

import argparse

from manymodels.node.sim.simulator import SimulationConfig, run_simulation

GOAL_SECONDS = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="repeat with seeds 0..N-1")
    args = parser.parse_args()
    print(f"{'seed':>4} {'wall s':>7} {'goal':>5} {'mean':>6} {'min':>6} {'alone':>6} {'pooled':>6} {'gain':>6}")
    for seed in range(args.seeds):
        s = run_simulation(SimulationConfig(seed=seed))["summary"]
        gain = s["mean_accuracy"] - s["mean_local_only_accuracy"]
        print(f"{seed:>4} {s['wall_seconds']:>7.2f} {s['wall_seconds'] / GOAL_SECONDS:>5.0%} {s['mean_accuracy']:>6.3f} "
              f"{s['min_accuracy']:>6.3f} {s['mean_local_only_accuracy']:>6.3f} {s['pooled_accuracy']:>6.3f} {gain:>+6.3f}")


if __name__ == "__main__":
    main()
