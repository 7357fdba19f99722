"""What discovery is set to (``DiscoveryConfig``) and what it counted (``DiscoveryStats``), shared by
its parts: announcements, providers and dialing."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_ANNOUNCE_BYTES = 4 * 1024


@dataclass
class DiscoveryConfig:
    # gossipsub
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval: float = 1.0
    relay_limit: float = 50.0  # messages per second per forwarder on the topic (py-libp2p's default is 10)
    max_rpc_bytes: int = 256 * 1024  # a peer's pubsub RPC above this resets its stream
    max_announce_bytes: int = MAX_ANNOUNCE_BYTES
    announce_rate: float = 1.0  # our own announcements: tokens per second ...
    announce_burst: int = 4  # ... and at most this many at once
    publish_queue: int = 16
    publish_timeout: float = 5.0
    max_skew_ms: int = 5 * 60 * 1000
    replay_window: int = 1024
    max_senders: int = 10_000  # authors in the replay guard; beyond, the least recently heard is evicted
    # Kad-DHT
    dht: bool = True
    lookup_timeout: float = 10.0  # find_providers, all of it
    query_timeout: float = 5.0  # one peer's answer to it
    provide_timeout: float = 20.0
    max_providers: int = 20
    max_provided: int = 256  # digests we announce as provider at once (oldest dropped)
    refresh_fast: float = 1.0  # seconds between routing-table refreshes while it grows ...
    refresh_slow: float = 60.0  # ... backing off to this when it does not
    refresh_timeout: float = 15.0
    # dialing what we find
    auto_connect: bool = True
    max_peers: int = 32  # stop dialing found peers at this many connections
    dial_concurrency: int = 4
    dial_retry: float = 1.0  # seconds before a failed peer is dialed again, doubling with each failure ...
    dial_backoff: float = 30.0  # ... up to this
    # mDNS
    mdns: bool = False
    mdns_poll: float = 0.5


@dataclass
class DiscoveryStats:
    announces_published: int = 0  # handed to gossipsub
    publish_dropped: Counter = field(default_factory=Counter)  # reason -> count (rate, queue_full, ...)
    announces_delivered: int = 0  # valid, from others, given to on_announce
    announces_valid: int = 0  # passed validation (own ones included)
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    rejected_from: Counter = field(default_factory=Counter)  # forwarding peer -> count
    callback_errors: int = 0
    provides: int = 0
    provide_failures: int = 0
    lookups: int = 0
    lookup_timeouts: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    dials: int = 0  # peers found (DHT or mDNS) and connected to
    dial_failures: int = 0
    mdns_found: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())
