"""Replay guard: a sliding window of sequence numbers per sender plus a timestamp skew bound, over a
bounded table of senders (keys are free: a stranger must not grow it forever).
Pure: the caller hands in `now_ms`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Reason, RejectedMessage

# to_state() keeps its shape sender -> (highest, seen); the guard's own numbers ride under this key,
# which is never a sender (keys are 32 bytes), as (watermark, ceiling).
WATERMARK_KEY = b""


@dataclass
class _Window:
    highest: int
    seen: int  # bit i set <=> sequence number highest - i was accepted
    ts: int = 0  # the largest timestamp accepted from this sender


@dataclass
class ReplayGuard:
    window: int = 1024  # how far out of order a sequence number may arrive
    max_skew_ms: int = 5 * 60 * 1000
    max_senders: int = 4096  # the table's bound; the least recently accepted sender is evicted
    # The largest ts ever accepted from an evicted sender: a sender not in the table may have been
    # evicted, so its message is accepted only if it is newer than anything an evicted sender sent.
    watermark: int = -1
    _senders: dict[bytes, _Window] = field(default_factory=dict)  # least recently accepted first

    def check_clock(self, ts_ms: int, now_ms: int) -> None:
        if abs(ts_ms - now_ms) > self.max_skew_ms:
            raise RejectedMessage(Reason.STALE, f"timestamp {ts_ms} is {ts_ms - now_ms:+d} ms from now")

    def check(self, sender: bytes, seq: int, ts_ms: int, now_ms: int) -> None:
        """Raise RejectedMessage if (seq, ts) must not be accepted; records nothing."""
        self.check_clock(ts_ms, now_ms)
        state = self._senders.get(sender)
        if state is None:
            if ts_ms <= self.watermark:
                raise RejectedMessage(Reason.REPLAYED, f"timestamp {ts_ms} is not above the evicted senders' "
                                                       f"watermark {self.watermark}")
            return
        if seq > state.highest:
            return
        age = state.highest - seq
        if age >= self.window:
            raise RejectedMessage(Reason.REPLAYED, f"sequence {seq} is below the window (highest {state.highest})")
        if state.seen >> age & 1:
            raise RejectedMessage(Reason.REPLAYED, f"sequence {seq} was already seen")

    def record(self, sender: bytes, seq: int, ts_ms: int | None = None) -> None:
        """Record an accepted (seq, ts). Pass `ts_ms`: a sender recorded without it raises the
        watermark only as far as the timestamps it was recorded with."""
        state = self._senders.pop(sender, None)  # re-inserted last: the most recently accepted
        if state is None:
            while len(self._senders) >= self.max_senders:
                self._evict()
            state = _Window(seq, 1)
        elif seq > state.highest:
            # A jump of a window or more leaves no earlier number inside it; shifting by the jump
            # itself would build an integer of up to 2**64 bits (MemoryError) for a signed seq jump.
            shift = seq - state.highest
            mask = (1 << self.window) - 1
            state.seen = ((state.seen << shift) | 1) & mask if shift < self.window else 1
            state.highest = seq
        elif state.highest - seq < self.window:  # below the window: nothing to record
            state.seen |= 1 << (state.highest - seq)
        if ts_ms is not None:
            state.ts = max(state.ts, ts_ms)
        self._senders[sender] = state

    def _evict(self) -> None:
        sender = next(iter(self._senders))
        self.watermark = max(self.watermark, self._senders.pop(sender).ts)

    def highest(self, sender: bytes) -> int | None:
        state = self._senders.get(sender)
        return None if state is None else state.highest

    def to_state(self) -> dict[bytes, tuple[int, int]]:
        """sender -> (highest, seen), least recently accepted first; plus, under WATERMARK_KEY,
        (watermark, ceiling): ceiling is the largest ts accepted from any sender in the table,
        which a restored sender is assumed to have sent (the state keeps no ts per sender)."""
        state = {s: (w.highest, w.seen) for s, w in self._senders.items()}
        ceiling = max((w.ts for w in self._senders.values()), default=-1)
        if max(self.watermark, ceiling) >= 0:
            state[WATERMARK_KEY] = (self.watermark, ceiling)
        return state

    @classmethod
    def from_state(cls, state: dict[bytes, tuple[int, int]], **kwargs) -> ReplayGuard:
        """Restore a to_state(); a state saved before the watermark existed loads too."""
        guard = cls(**kwargs)
        guard.watermark, ceiling = state.get(WATERMARK_KEY, (-1, 0))
        for sender, (highest, seen) in state.items():
            if sender != WATERMARK_KEY:
                guard._senders[sender] = _Window(highest, seen, max(ceiling, 0))
        while len(guard._senders) > guard.max_senders:
            guard._evict()
        return guard
