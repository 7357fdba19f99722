"""What a simulation records of each node at each point of its report's history: after every round
(the synchronous schedule) or at every sampling instant (the asynchronous one)."""
from __future__ import annotations

from collections import Counter

from ..core.node import Node

# per node, what each round did: "history" (its accuracy after the round), "bytes_sent_per_round"
# and "rejected_per_round" (by kind, by reason: what this round added) and "banned_per_round" (how
# many peers it had banned by then), "epsilon" (the DP-SGD privacy spent by then; with DP only)
Series = list[dict[str, list]]
Counts = tuple[Counter, Counter]  # a node's bytes sent by kind and rejections by reason, at some instant


def new_series(count: int) -> Series:
    return [{"history": [], "bytes_sent_per_round": [], "rejected_per_round": [], "banned_per_round": [],
             "epsilon": []} for _ in range(count)]


def counts(node: Node) -> Counts:
    return Counter(node.stats.sent_by_kind), Counter(node.stats.rejected)


def record(series: dict[str, list], node: Node, before: Counts) -> None:
    """What the node did since `before`, and what it holds now; its "history" (held-out accuracy)
    is the caller's to add, since the simulator evaluates while the next round runs."""
    series["bytes_sent_per_round"].append(dict(node.stats.sent_by_kind - before[0]))
    series["rejected_per_round"].append(dict(sorted((node.stats.rejected - before[1]).items())))
    series["banned_per_round"].append(len(node.banned))
    if node.privacy is not None:
        series["epsilon"].append(round(node.privacy["epsilon"], 6))
