"""The same simulation on `--backend local` and on a two-node Ray cluster on this machine (started
here, on loopback, one CPU per Ray node: two shards): the seconds per round once running, the whole
run, the overhead ratio and the cost per node-round, and whether the reports are equal. Logistic
regression on MNIST-1D (iid), random:5, 1,000 nodes by default (the issue's measurement).

What a real cluster costs per round is about max(shard's nodes x per-node cost) + the driver's
routing (every message passes through this process twice) + one Ray round trip per step."""
from __future__ import annotations

import argparse
import copy
import time


def timed(run, rounds: int) -> dict:
    """Run `run(on_round)`; the whole run's seconds, and the seconds per round between the reports
    of rounds 1 to R-1 (after start-up: the world built, the shards' nodes built; the local engine
    reports a round once evaluated, while the next one runs, so its last report comes at once)."""
    marks = []
    started = time.perf_counter()
    report = run(lambda r, acc: marks.append(time.perf_counter()))
    total = time.perf_counter() - started
    per_round = (marks[-2] - marks[0]) / (rounds - 2) if rounds > 2 else marks[-1] - started
    return {"report": report, "seconds": total, "per_round": per_round, "to_first_round": marks[0] - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--topology", default="random:5")
    parser.add_argument("--partition", default="iid")  # MNIST-1D's 3,800 samples: dirichlet leaves some of 1,000 empty
    args = parser.parse_args()

    from manymodels.node.sim.ray_backend import import_ray, simulate_on_ray
    from manymodels.node.sim.simulator import SimulationConfig, run_simulation
    from manymodels.node.sim.spec import SimulationSpec

    options = dict(nodes=args.nodes, rounds=args.rounds, dataset=args.dataset, partition=args.partition,
                   model="logreg", topology=args.topology)
    local = timed(lambda on_round: run_simulation(SimulationConfig(**options), on_round), args.rounds)

    import_ray(loopback=True)
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster_seconds = time.perf_counter() - started
    try:
        spec = SimulationSpec.parse(SimulationConfig(backend="ray", address=cluster.address, **options))
        placement = []
        on_ray = timed(lambda on_round: _keep(placement, simulate_on_ray(spec, on_round)), args.rounds)
    finally:
        cluster.shutdown()

    same = _without_wall_time(local["report"]) == _without_wall_time(on_ray["report"])
    ray_nodes = len({shard["ray_node"] for shard in placement})
    print(f"{args.nodes} logreg nodes, {args.dataset} {args.partition}, {args.topology}, {args.rounds} rounds; Ray: "
          f"{len(placement)} shards on {ray_nodes} Ray nodes (cluster start {cluster_seconds:.1f} s, not counted)")
    print(f"{'backend':>8} {'s/round':>8} {'ms/node-round':>14} {'through round 1 s':>18} {'whole run s':>12}")
    for name, row in (("local", local), ("ray", on_ray)):
        print(f"{name:>8} {row['per_round']:>8.3f} {1000 * row['per_round'] / args.nodes:>14.3f} "
              f"{row['to_first_round']:>18.1f} {row['seconds']:>12.1f}")
    ideal = local["per_round"] / len(placement)  # the shards in parallel, at no cost
    print(f"overhead ratio ray/local: {on_ray['per_round'] / local['per_round']:.2f} per round, "
          f"{on_ray['seconds'] / local['seconds']:.2f} whole run; ray / (local / shards): "
          f"{on_ray['per_round'] / ideal:.2f} per round; reports equal (but wall time): {same}")


def _keep(placement: list, result: tuple[dict, list[dict]]) -> dict:
    report, where = result
    placement.extend(where)
    return report


def _without_wall_time(report: dict) -> dict:
    report = copy.deepcopy(report)
    del report["summary"]["wall_seconds"]
    return report


if __name__ == "__main__":
    main()
