"""The simulator: the memory network, topologies, attacks, planted peers, the fold log, and the simulation
loop with its report."""
