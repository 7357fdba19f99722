"""Run the same non-IID network under several aggregation rules and compare them with
training alone and with one pooled model.

    python examples/compare_rules.py
"""
from manymodels.node.sim.simulator import SimulationConfig, run_simulation

for rule in ("fedavg", "median", "trimmed:0.2", "krum:1", "gossip:0.5", "clippedgossip:1.0"):
    config = SimulationConfig(nodes=8, rounds=15, partition="dirichlet:0.3", rule=rule, topology="full", seed=0)
    s = run_simulation(config)["summary"]
    print(f"{rule:>18}: many models {s['mean_accuracy']:.3f} (min {s['min_accuracy']:.3f})  "
          f"alone {s['mean_local_only_accuracy']:.3f}  pooled {s['pooled_accuracy']:.3f}")
