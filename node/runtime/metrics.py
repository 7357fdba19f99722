"""The daemon's Prometheus endpoint (`node start --metrics HOST:PORT`), served by prometheus_client
from a registry of the daemon's own. Nothing is counted twice: at each scrape `NodeCollector` reads
the counters the node keeps anyway (those `node status` shows), on the trio loop like the control
socket's status, so nothing changes under it while it is read. The one thing measured here is how
long a fold takes (fold, evaluate, save), a histogram the daemon observes."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import trio
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .listen import ListenError, metrics_address

# a digits logreg folds in milliseconds, a large model with many inputs in tens of seconds
FOLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

log = logging.getLogger("manymodels.node")


class Metrics:
    """The registry, the fold-duration histogram, and the HTTP server once `serve` has started it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fold_seconds = Histogram("manymodels_fold_duration_seconds",
                                      "Seconds a learning cycle's fold took: fold, evaluate, save.",
                                      buckets=FOLD_BUCKETS, registry=self.registry)
        self._server = None

    def serve(self, address: str, daemon, node, transport) -> None:
        """Serve /metrics on `address` (HOST:PORT; "" serves nothing) from a daemon thread; called
        on the daemon's trio loop once its node is built."""
        if not address:
            return
        _, host, port = metrics_address(address)
        self.registry.register(NodeCollector(daemon, node, transport, trio.lowlevel.current_trio_token()))
        ProcessCollector(registry=self.registry)  # the daemon process's CPU, memory, open files
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:  # taken since `node start` checked it
            raise ListenError(f"--metrics {address}: cannot serve on {host} port {port}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class NodeCollector(Collector):
    """The running node's counters as metric families, read when Prometheus scrapes."""

    def __init__(self, daemon, node, transport, loop: trio.lowlevel.TrioToken) -> None:
        self.daemon, self.node, self.transport, self.loop = daemon, node, transport, loop

    def collect(self) -> Iterable[Metric]:
        try:
            return trio.from_thread.run_sync(self._families, trio_token=self.loop)
        except trio.RunFinishedError:  # the daemon has stopped
            return []

    def _families(self) -> list[Metric]:
        daemon, node, transport, stats = self.daemon, self.node, self.transport, self.node.stats
        families = [
            _counter("messages_accepted", "Messages verified and handled, since the node's first start.",
                     stats.messages_accepted),
            _counter("messages_rejected", "Messages that failed verification, by reason, since the first start.",
                     by=("reason", stats.rejected)),
            _counter("messages_refused", "Valid messages the exchange would not use, by reason, since the first "
                                         "start.", by=("reason", stats.refused)),
            _counter("messages_pulled", "Messages fetched by digest before a fold, since the first start.",
                     node.pulled),
            _counter("sent_bytes", "Bytes of messages sent to neighbours, by kind, since the first start.",
                     by=("kind", stats.sent_by_kind), unit="bytes"),
            _counter("received_bytes", "Bytes of messages received, since the first start.", stats.bytes_received,
                     unit="bytes"),
            _counter("gate_events", "What the transport's gate did to peers, by event, since this start.",
                     by=("event", transport.gate.events)),
            _counter("inbound_dropped_frames", "Frames dropped unread because the verifier's queue was full, "
                                               "since this start.", daemon.inbound.dropped if daemon.inbound else 0),
            _counter("inbound_frames_refused", "Inbound frames refused before verification (too large, truncated, "
                                               "over the bytes in flight, by the gate, a failed stream), by reason, "
                                               "since this start.", by=("reason", transport.stats.frames_refused())),
            _gauge("gate_blocked_peers", "Peers the transport's gate blocks now.",
                   transport.gate.blocked_count(time.monotonic())),
            _gauge("connected_peers", "Peers connected now.", len(transport.connected_peers())),
            _gauge("banned_peers", "Peers banned for their reputation.", len(node.banned)),
            _gauge("model_version", "The version of this node's model (one more per learning cycle).", node.version),
            _gauge("uptime_seconds", "Seconds since the daemon started.", time.time() - daemon.started / 1000),
            InfoMetricFamily("manymodels_node", "This node: its peer id, model, exchange and rule.",
                             value={"id": node.id, "model": node.learner.architecture,
                                    "exchange": daemon.config.exchange, "rule": daemon.config.rule}),
        ]
        if daemon.history:  # none before the first fold of a fresh node
            families.append(_gauge("accuracy_ratio", "Held-out accuracy of the model at the last fold (0..1).",
                                   daemon.history[-1]["accuracy"], unit="ratio"))
        return families


def _counter(name: str, doc: str, value: float | None = None, *, by: tuple[str, dict] | None = None,
             unit: str = "") -> CounterMetricFamily:
    """manymodels_NAME_total: one value, or one per key of a counter (`by`: label name, counts)."""
    family = CounterMetricFamily(f"manymodels_{name}", doc, value=value, labels=[by[0]] if by else None, unit=unit)
    for key, n in sorted(dict(by[1]).items()) if by else ():
        family.add_metric([key], n)
    return family


def _gauge(name: str, doc: str, value: float, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(f"manymodels_{name}", doc, value=value, unit=unit)
