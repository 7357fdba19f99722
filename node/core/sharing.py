"""Who gets this node's knowledge (`--share`): everyone (`all`, the default), only the peers listed
in a file (`allowlist:FILE`, one peer id per line, `#` comments), or the peers that give knowledge
back (`reciprocal[:N]`).

Reciprocal is BitTorrent's tit-for-tat at the scale of periods: a neighbour gets this node's
knowledge messages while it has given at least N knowledge messages that this node's exchange
took (not refused) in the last WINDOW versions; a newcomer gets them for its first TRIAL versions
(so two reciprocal nodes can start), and then must give. A peer left out gets no knowledge message
from this node, and a daemon refuses it the blobs too (`withheld`, docs/PROTOCOL.md §11.4); it
still sees the announcements, which say what it would get by contributing. Identities are free, so
a free-rider can take a new one for a new trial: what it gets is bounded by TRIAL messages per
identity, and by the transport's limits on new peers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from manymodels.protocol import peer_id

KNOWLEDGE = frozenset({"weights", "logits", "synthetic"})
WINDOW = 5  # versions over which a peer's contributions count
TRIAL = 3  # versions a newcomer gets knowledge before it must give some
MAX_PEERS = 4096  # peers whose contributions are remembered (the least recently seen dropped)


class ShareError(ValueError):
    """A --share value that cannot work; its message is one line for the user."""


@dataclass(frozen=True)
class SharePolicy:
    mode: str = "all"  # all | reciprocal | allowlist
    threshold: int = 1  # reciprocal: knowledge messages a peer must have given within WINDOW versions
    allow: frozenset[str] = frozenset()  # allowlist: the peer ids

    @classmethod
    def parse(cls, text: str) -> SharePolicy:
        mode, _, arg = text.strip().partition(":")
        if mode == "all" and not arg:
            return cls()
        if mode == "reciprocal":
            if arg and not (arg.isdigit() and int(arg) >= 1):
                raise ShareError(f"--share reciprocal:N takes a whole number N >= 1 of messages, got {arg!r}")
            return cls("reciprocal", int(arg or 1))
        if mode == "allowlist" and arg:
            return cls("allowlist", allow=_allowlist(Path(arg).expanduser()))
        raise ShareError(f"--share {text!r}: all, reciprocal[:N] or allowlist:FILE")


def _allowlist(path: Path) -> frozenset[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShareError(f"--share allowlist:{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    peers = [line.split("#", 1)[0].strip() for line in lines]
    for n, peer in enumerate(peers, 1):
        if peer and not _is_peer_id(peer):
            raise ShareError(f"--share allowlist:{path}, line {n}: {peer!r} is not a peer id")
    return frozenset(p for p in peers if p)


def _is_peer_id(text: str) -> bool:
    import base58

    try:
        key = base58.b58decode(text)
    except ValueError:
        return False
    return len(key) == 38 and peer_id(key[6:]) == text  # identity multihash of an Ed25519 key, as ours


@dataclass
class Sharing:
    """A node's sharing state: when each peer was first offered knowledge, and when it gave some."""
    policy: SharePolicy = field(default_factory=SharePolicy)
    first_offered: dict[str, int] = field(default_factory=dict)  # peer -> version
    given: dict[str, list[int]] = field(default_factory=dict)  # peer -> versions of its recent contributions

    @property
    def counts_gifts(self) -> bool:
        """Whether gave() is to be called: only the reciprocal policy reads what peers gave."""
        return self.policy.mode == "reciprocal"

    def gave(self, peer: str, version: int) -> None:
        """`peer` gave a knowledge message this node's exchange took, while at `version`."""
        recent = [v for v in self.given.pop(peer, []) if version - v < WINDOW][-64:]
        self.given[peer] = [*recent, version]
        _bound(self.given)

    def shares_with(self, peer: str, version: int) -> bool:
        """Does `peer` get this node's knowledge at `version`?"""
        policy = self.policy
        if policy.mode == "all":
            return True
        if policy.mode == "allowlist":
            return peer in policy.allow
        first = self.first_offered.setdefault(peer, version)
        _bound(self.first_offered)
        recent = sum(version - v < WINDOW for v in self.given.get(peer, ()))
        return version - first < TRIAL or recent >= policy.threshold


def _bound(table: dict) -> None:
    while len(table) > MAX_PEERS:
        del table[next(iter(table))]
