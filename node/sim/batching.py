"""Which nodes of a simulation train together (node/learning/batched.py) and which alone: a node
trains in a batch when its learner can and its exchange adds no samples of peers to its data."""
from __future__ import annotations

from ..core.node import Node
from ..learning.batched import fit_all, group_key


def train_nodes(nodes: list[Node], epochs: int, batched: bool) -> None:
    """Every node's train(epochs); with `batched`, those that can in batches, equal to one by one."""
    together = [node for node in nodes if batched and group_key(node.learner) is not None
                and node.exchange.extra() is None]
    fit_all([node.learner for node in together], epochs)
    chosen = set(map(id, together))
    for node in nodes:
        if id(node) not in chosen:
            node.train(epochs)
