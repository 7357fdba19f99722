"""Planted peers: nodes whose data is changed on purpose, so a study knows what their data is worth.

`shuffled:J` node J's labels are shuffled among its examples: its data carry no signal.
`duplicate:J:K` node K holds a copy of node J's data instead of its own (its own is then nobody's).
`tiny:J[:COUNT]` node J keeps only COUNT of its examples (default TINY), chosen by seed.

They change the built-in datasets' partitions (node indices of the N-way split), nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMS = "shuffled:J, duplicate:J:K, tiny:J[:COUNT]"
TINY = 5


class PlantError(ValueError):
    pass


@dataclass(frozen=True)
class Plants:
    shuffled: frozenset[int] = frozenset()
    copies: dict[int, int] = field(default_factory=dict)  # node K -> the node J whose data it holds
    tiny: dict[int, int] = field(default_factory=dict)  # node J -> the examples it keeps

    def partitions(self, parts: list[np.ndarray], seed: int) -> list[np.ndarray]:
        """The partitions with the copies and the tiny ones planted."""
        rng = np.random.default_rng([seed, 0x7147])
        parts = [parts[self.copies.get(k, k)] for k in range(len(parts))]
        for j, count in sorted(self.tiny.items()):
            parts[j] = np.sort(rng.choice(parts[j], size=min(count, len(parts[j])), replace=False))
        return parts

    def labels(self, j: int, y: np.ndarray, seed: int) -> np.ndarray:
        """Node j's labels, shuffled if it is planted so."""
        return np.random.default_rng([seed, 0x5407, j]).permutation(y) if j in self.shuffled else y


def parse_plants(specs: tuple[str, ...], nodes: int) -> Plants:
    shuffled, copies, tiny = set(), {}, {}
    for spec in specs:
        kind, *args = spec.split(":")
        indices = {"shuffled": 1, "duplicate": 2, "tiny": 1}.get(kind, 0)  # how many args are node indices
        try:
            numbers = [int(a) for a in args]
        except ValueError:
            numbers = []
        if not indices or len(numbers) < indices or any(not 0 <= n < nodes for n in numbers[:indices]):
            raise PlantError(f"bad plant {spec!r}: expected one of {FORMS} with node indices in 0..{nodes - 1}")
        if kind == "shuffled" and len(numbers) == 1:
            shuffled.add(numbers[0])
        elif kind == "duplicate" and len(numbers) == 2 and numbers[0] != numbers[1]:
            copies[numbers[1]] = numbers[0]
        elif kind == "tiny" and len(numbers) in (1, 2) and (numbers + [TINY])[1] >= 1:
            tiny[numbers[0]] = (numbers + [TINY])[1]
        else:
            raise PlantError(f"bad plant {spec!r}: expected one of {FORMS}")
    return Plants(frozenset(shuffled), copies, tiny)
