"""A daemon's contribution ledger: what each peer's knowledge did to this node's model, from what the
node has anyway — no extra traffic, no retraining.

Each fold is measured on the node's held-out data before and after; the change is credited to the
peers whose messages the fold took, each by its share of the examples behind them (a weights
message's `num_examples`, a logits message's class counts, a synthetic batch's samples: what a
weighted average gives each). Summed over the folds, a peer's credit estimates how many points of
held-out accuracy its data has added to this model (negative: it cost some). It is the one-run,
log-based estimate of the value study (docs/STUDIES.md) on a live node: the own model's share is
not credited (the fold's change is what the peers brought), and a fold that mixes a good and a bad
peer credits both with the net change by share, so a peer's credit is an estimate, read over many
folds. The ledger keeps totals per peer (the most recently credited MAX_PEERS) and the last folds."""
from __future__ import annotations

from dataclasses import dataclass, field

from manymodels.protocol import Logits, Payload, SyntheticBatch, Weights

MAX_PEERS = 1024
MAX_FOLDS = 100  # folds kept in full (the totals cover all of them)


def examples_behind(payload: Payload) -> int:
    """How many private examples a knowledge payload speaks for (its weight in an average)."""
    if isinstance(payload, Weights):
        return payload.num_examples
    if isinstance(payload, Logits):
        return sum(payload.class_counts)
    if isinstance(payload, SyntheticBatch):
        return len(payload.y)
    return 0


@dataclass
class Ledger:
    peers: dict[str, dict] = field(default_factory=dict)  # peer id -> its totals, most recently credited last
    folds: list[dict] = field(default_factory=list)

    def record(self, version: int, before: float, after: float, inputs: list[tuple[str, int]],
               reputation: dict[str, float | None]) -> dict:
        """Credit one fold: model accuracy `before` and `after` it, `inputs` as (peer, examples) per
        message taken; `reputation`: each peer's score at the time (None: not scored)."""
        examples: dict[str, int] = {}
        for peer, n in inputs:
            examples[peer] = examples.get(peer, 0) + max(n, 0)
        total = sum(examples.values())
        shares = {peer: (n / total if total else 1 / len(examples)) for peer, n in examples.items()}
        delta = after - before
        for peer, share in shares.items():
            entry = self.peers.pop(peer, None) or {"folds": 0, "share": 0.0, "credit": 0.0}
            entry.update(folds=entry["folds"] + 1, share=entry["share"] + share, credit=entry["credit"] + delta * share,
                         last_version=version, reputation=reputation.get(peer))
            self.peers[peer] = entry
        while len(self.peers) > MAX_PEERS:
            del self.peers[next(iter(self.peers))]
        fold = {"version": version, "accuracy_before": round(before, 4), "accuracy_after": round(after, 4),
                "shares": {peer: round(share, 4) for peer, share in sorted(shares.items())},
                "reputation": {peer: reputation.get(peer) for peer in sorted(shares)}}
        self.folds = [*self.folds[-(MAX_FOLDS - 1):], fold]
        return fold

    def table(self) -> list[dict]:
        """Each peer's estimated contribution, the largest first: folds it was in, its summed share,
        its credit (accuracy points, as a fraction: 0.05 is 5 points) and the credit per fold."""
        rows = [{"peer": peer, "folds": e["folds"], "share": round(e["share"], 4), "credit": round(e["credit"], 4),
                 "credit_per_fold": round(e["credit"] / e["folds"], 4), "last_version": e["last_version"],
                 "reputation": e["reputation"]} for peer, e in self.peers.items()]
        return sorted(rows, key=lambda r: (-r["credit"], r["peer"]))

    def to_json(self) -> dict:
        return {"peers": self.peers, "folds": self.folds}

    @classmethod
    def from_json(cls, value: dict) -> Ledger:
        return cls(dict(value.get("peers", {})), list(value.get("folds", [])))
