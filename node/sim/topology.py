"""Who talks to whom in a simulation: full, ring, random:k. Undirected, deterministic for a seed."""
from __future__ import annotations

import numpy as np


class TopologyError(ValueError):
    pass


def neighbours(spec: str, n: int, seed: int) -> list[list[int]]:
    """Adjacency lists (sorted) for n nodes."""
    name, _, arg = spec.partition(":")
    if name == "full" and not arg:
        return [[j for j in range(n) if j != i] for i in range(n)]
    if name == "ring" and not arg:
        if n < 2:
            return [[] for _ in range(n)]
        return [sorted({(i - 1) % n, (i + 1) % n} - {i}) for i in range(n)]
    if name == "random":
        try:
            k = int(arg)
        except ValueError:
            raise TopologyError(f"bad topology {spec!r}: expected random:K with an integer K") from None
        if not 1 <= k < n:
            raise TopologyError(f"bad topology {spec!r}: random:K needs 1 <= K < nodes ({n})")
        # A ring keeps the graph connected; each node then adds random links up to about k.
        rng = np.random.default_rng(seed)
        edges = [set(nb) for nb in neighbours("ring", n, seed)]
        for i in range(n):
            others = [j for j in rng.permutation(n) if j != i and j not in edges[i]]
            for j in others[: max(0, k - len(edges[i]))]:
                edges[i].add(int(j))
                edges[int(j)].add(i)
        return [sorted(e) for e in edges]
    raise TopologyError(f"unknown topology {spec!r}; expected full, ring or random:K")
