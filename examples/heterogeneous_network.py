"""Ten nodes, five architectures (logistic regression, two MLPs, a CNN and a scikit-learn forest),
each with a few classes of digits (Dirichlet α = 0.1). No node can use another's weights; they
learn from each other through predictions on a shared probe set, or through synthetic samples.

    python examples/heterogeneous_network.py
"""
from manymodels.node.sim.simulator import SimulationConfig, run_simulation

for exchange in ("distill", "synthetic", "mixed"):
    config = SimulationConfig(nodes=10, rounds=10, model="mixed", exchange=exchange, partition="dirichlet:0.1")
    report = run_simulation(config)
    print(f"--- {exchange}: {report['summary']['bytes_sent'] / 1e6:.1f} MB sent in all")
    for arch, a in report["summary"]["architectures"].items():
        print(f"{arch:>9}: alone {a['mean_local_only_accuracy']:.3f} -> together {a['mean_accuracy']:.3f}"
              f"   (one pooled {arch}: {a['pooled_accuracy']:.3f})")
