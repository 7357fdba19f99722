"""py-libp2p's logging, bounded: it logs a warning per failed provide or stream to a peer, which
hostile or departed peers would turn into an unbounded log, and INFO lines on loggers it sets to
INFO itself; its records reach the daemon's handler at WARNING and rate-limited."""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

from libp2p.network.stream.exceptions import StreamEOF


class _CleanEofFilter(logging.Filter):
    """py-libp2p 0.8.1's Kad-DHT server logs a WARNING each time a peer closes a DHT stream
    cleanly (its loop expects IncompleteReadError but gets StreamEOF): dozens a minute while
    the routing table is refreshed. Only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Failed to read DHT message from stream: %s" and record.args
                    and type(record.args[0]) is StreamEOF)


def quiet_clean_eof_warnings() -> None:
    """Install ``_CleanEofFilter`` on py-libp2p's Kad-DHT logger (idempotent)."""
    dht_logger = logging.getLogger("libp2p.kad_dht.kad_dht")
    if not any(isinstance(f, _CleanEofFilter) for f in dht_logger.filters):
        dht_logger.addFilter(_CleanEofFilter())


class RateLimit(logging.Filter):
    """At most ``burst`` records per ``period`` seconds from each line of code that logs; then
    one line says how many were left out. py-libp2p logs a warning per failed provide or stream
    to a peer, which hostile or departed peers would turn into an unbounded log."""

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._windows: OrderedDict[tuple, list] = OrderedDict()  # key -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.pathname, record.lineno)  # py-libp2p formats its messages itself (f-strings)
        now = time.monotonic()
        window = self._windows.pop(key, None)
        if window is None or now - window[0] > self.period:
            if window is not None and window[1] > self.burst:
                record.msg = f"({window[1] - self.burst} like the next left out in {self.period:.0f} s) {record.msg}"
            window = [now, 0]
        self._windows[key] = window
        while len(self._windows) > 1024:
            self._windows.popitem(last=False)
        window[1] += 1
        return window[1] <= self.burst


class _ThroughRoot(logging.Handler):
    """py-libp2p's records at WARNING (it sets INFO on some of its loggers: two auto-connector lines
    a second), rate-limited, on to the root logger's handlers (the daemon's one format), or to
    stderr where none is set up."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(RateLimit())

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers or [logging.lastResort]:
            if handler is not None and record.levelno >= handler.level:
                handler.handle(record)


def bound_libp2p_logs() -> None:
    """py-libp2p's records through ``_ThroughRoot`` only (idempotent)."""
    libp2p_logger = logging.getLogger("libp2p")
    if not any(isinstance(h, _ThroughRoot) for h in libp2p_logger.handlers):
        libp2p_logger.addHandler(_ThroughRoot())
        libp2p_logger.propagate = False
