"""Types shared by the rules and the registry (kept apart so the rule modules need not import the registry)."""
from __future__ import annotations

import numpy as np

NDArrays = list[np.ndarray]  # one array per tensor, as in Flower
Results = list[tuple[NDArrays, float]]  # (update, weight), e.g. weight = number of examples


class RuleError(ValueError):
    """A rule spec that does not parse, or inputs a rule cannot aggregate. The message says why."""
