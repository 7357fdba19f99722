"""The peer gate: what a peer may cost this node, and how a misbehaving one is let go.

Pure bookkeeping (the caller hands in the time, in seconds), used by the libp2p transport before
it reads a frame and by the daemon after it verified one. Per peer:

* **Strikes** decay at ``forgive_per_s``. Every frame that fails (too large, truncated, or rejected
  by verification) adds a strike; the mild reasons an honest peer can cause (a replay across lanes,
  a slow clock, a ban by reputation) add a quarter. Above ``throttle_at`` the peer is *throttled*:
  its frames are dropped unread (and still count). Above ``block_at`` it is *blocked*: the transport
  disconnects it, forgets it (peer table, DHT routing table, peerstore) and refuses it for
  ``block_s`` seconds. Keys cost nothing, so this is per connection (peer id), not per signer.
* **Frames** pass a token bucket (``frames_per_s``, burst ``frame_burst``): a validly signed flood
  costs a verification per frame, so its rate is bounded; frames over it are dropped and count.
* **Serving** (answers to ``blob_request``) passes a byte bucket (``serve_bytes_per_s``, burst
  ``serve_burst``), so a 1 KiB request cannot make this node send more than its budget.
* **New announcement authors** a peer relays (gossipsub's propagation source) pass a bucket
  (``new_authors_per_min``, burst ``new_authors_burst``): fresh keys cost nothing, and each new
  author takes a place in discovery's bounded replay guard, whose evictions raise its watermark.
  An author over the rate is refused with a mild strike (``NEW_AUTHORS``) and never enters it.

Tables are bounded (``max_peers``, least recently seen evicted; a blocked peer is kept until its
block ends, up to ``max_blocked``)."""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

MiB = 1 << 20
# reasons an honest peer can cause now and then: a replay across lanes, a slow clock, a ban by
# reputation, an offer bigger than this node takes (another architecture's weights), a burst
# faster than this node verifies
NEW_AUTHORS = "new_authors"  # an announcement by a new author, over its forwarder's rate
MILD = frozenset({"replayed", "stale", "banned", "unwanted_size", "inbound_busy", NEW_AUTHORS})
OK, THROTTLED, BLOCKED = "ok", "throttled", "blocked"


@dataclass(frozen=True)
class GateConfig:
    forgive_per_s: float = 0.2
    throttle_at: float = 10.0
    block_at: float = 30.0
    block_s: float = 600.0
    frames_per_s: float = 20.0
    frame_burst: float = 200.0  # a pull of a 512 MiB model is 128 chunks in a row
    serve_bytes_per_s: float = 32 * MiB
    serve_burst: float = 128 * MiB
    new_authors_per_min: float = 16.0
    new_authors_burst: float = 32.0
    max_peers: int = 4096
    max_blocked: int = 65536


@dataclass
class _Bucket:
    level: float
    at: float

    def take(self, amount: float, rate: float, burst: float, now: float) -> bool:
        self.level = min(burst, self.level + (now - self.at) * rate)
        self.at = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


@dataclass
class _Peer:
    strikes: float
    at: float
    frames: _Bucket
    serving: _Bucket
    authors: _Bucket


@dataclass
class PeerGate:
    config: GateConfig = field(default_factory=GateConfig)
    blocked_until: OrderedDict = field(default_factory=OrderedDict)  # peer id -> time its block ends
    events: Counter = field(default_factory=Counter)  # throttled, blocked, rate_limited, serve_refused, ...
    _peers: OrderedDict = field(default_factory=OrderedDict)

    def _peer(self, peer: str, now: float) -> _Peer:
        c = self.config
        state = self._peers.pop(peer, None)
        if state is None:
            state = _Peer(0.0, now, _Bucket(c.frame_burst, now), _Bucket(c.serve_burst, now),
                          _Bucket(c.new_authors_burst, now))
            while len(self._peers) >= c.max_peers:
                self._peers.popitem(last=False)
        else:  # strikes decay
            state.strikes = max(0.0, state.strikes - (now - state.at) * c.forgive_per_s)
            state.at = now
        self._peers[peer] = state  # most recently seen last
        return state

    def is_blocked(self, peer: str, now: float) -> bool:
        until = self.blocked_until.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self.blocked_until[peer]
        return False

    def blocked_count(self, now: float) -> int:
        return sum(until > now for until in self.blocked_until.values())

    def admit(self, peer: str, now: float) -> str:
        """May a frame from this peer be read and verified? OK, THROTTLED (drop it unread: a strike
        or over the frame rate) or BLOCKED (disconnect)."""
        if self.is_blocked(peer, now):
            return BLOCKED
        state = self._peer(peer, now)
        c = self.config
        if state.strikes > c.throttle_at or not state.frames.take(1, c.frames_per_s, c.frame_burst, now):
            self.events["throttled" if state.strikes > c.throttle_at else "rate_limited"] += 1
            return BLOCKED if self.strike(peer, "throttled", now) == BLOCKED else THROTTLED
        return OK

    def strike(self, peer: str, reason: str, now: float) -> str:
        """Count one failed frame; returns the peer's standing afterwards."""
        if self.is_blocked(peer, now):
            return BLOCKED
        state = self._peer(peer, now)
        state.strikes += 0.25 if reason in MILD else 1.0
        c = self.config
        if state.strikes > c.block_at:
            del self._peers[peer]
            self.blocked_until[peer] = now + c.block_s
            while len(self.blocked_until) > c.max_blocked:
                self.blocked_until.popitem(last=False)
            self.events["blocked"] += 1
            return BLOCKED
        return THROTTLED if state.strikes > c.throttle_at else OK

    def may_serve(self, peer: str, nbytes: int, now: float) -> bool:
        c = self.config
        if self.is_blocked(peer, now):
            return False
        if self._peer(peer, now).serving.take(nbytes, c.serve_bytes_per_s, c.serve_burst, now):
            return True
        self.events["serve_refused"] += 1
        return False

    def may_introduce(self, peer: str, now: float) -> bool:
        """May ``peer`` relay an announcement by an author this node has not heard from yet?"""
        c = self.config
        if self._peer(peer, now).authors.take(1, c.new_authors_per_min / 60.0, c.new_authors_burst, now):
            return True
        self.events["new_authors_refused"] += 1
        return False

    def standing(self, peer: str, now: float) -> dict:
        """For `peers`: strikes and whether the peer is blocked (and for how long)."""
        if self.is_blocked(peer, now):
            return {"strikes": None, "blocked_s": round(self.blocked_until[peer] - now, 1)}
        state = self._peers.get(peer)
        strikes = 0.0 if state is None else max(0.0, state.strikes - (now - state.at) * self.config.forgive_per_s)
        return {"strikes": round(strikes, 2), "blocked_s": 0}
