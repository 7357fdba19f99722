"""The research instruments: grids of simulations run through node/sim, and pure analyses of what they
measured (value: what each peer's data is worth to each model; homogeneity: how alike models become
as they grow, alone and networked; foundation: what many models inherit from the frozen encoder they
share)."""
