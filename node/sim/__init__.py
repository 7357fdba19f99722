"""The simulator: the memory network, topologies, attacks, and the simulation loop with its report."""
