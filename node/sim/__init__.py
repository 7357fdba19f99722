"""The simulator: the memory network, topologies, attacks, planted peers, the fold log, the simulation
loop with its report, and its backends (local, or shards on Ray)."""
