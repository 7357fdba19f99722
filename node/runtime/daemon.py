"""The node daemon: one node on the real network, run from a home directory.

The trio loop owns the network (libp2p transport, discovery, reach -- reachability, relays and
hole punching: docs/NETWORK.md -- and the control socket) and never waits on learning:
the model lives in a worker process (`WorkerLearner`), and each learning cycle runs in a thread
that only waits on that process. Inbound frames are verified off the loop (`Inbound`: a bounded
queue, one verifier thread); a message on a direct stream must be signed by the peer Noise
authenticated, and one that fails strikes that peer at the transport's gate. State (sequence
number, replay window, peers, provenance, checkpoint) is written atomically after every cycle and
at shutdown, so a restarted daemon resumes with the same id and model."""
from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import trio

from manymodels.protocol.envelope import ENVELOPE_OVERHEAD
from manymodels.protocol import (MAX_ENVELOPE_BYTES, Announce, BlobRequest, BlobResponse, Error, Hello, Message,
                                 PeerExchange, ReplayGuard, Weights, open_envelope, peer_id)

from .control import serve as serve_control
from .inbound import Inbound
from .ledger import Ledger, examples_behind
from .listen import listen_addrs
from .logs import size
from .metrics import Metrics
from ..p2p.discovery import Discovery, DiscoveryConfig
from ..p2p.logs import bound_libp2p_logs
from ..p2p.reach import Reach, ReachConfig
from ..learning.probe import ProbeSet
from ..learning.recipe import LearnerRecipe
from ..core.exchange import Folded
from ..core.node import Node, NodeStats
from ..spec import DEFAULT_CODECS, NodeData, NodeSpec, SpecError, build_node
from .store import Home, atomic_write
from .worker import WorkerLearner

BLOB_CHUNK = 4 << 20
MAX_BLOBS = 8  # sealed messages kept for peers to pull (the newest)
PULL_TIMEOUT = 60
CLOSE_S = 10  # what a stopping node gives its network services to close, its state already saved
PULL_WINDOW = 4  # chunk requests in flight per pull: the link stays busy while a chunk is verified
MAX_PEERS = 32  # peer exchange stops dialing beyond this many connections
MAX_REMOTE_MODELS = 1024  # announcements remembered (one per author, the newest version)
PULL_CANDIDATES = 3  # providers tried by a pull that names no peer
MAX_PULLS_PER_CYCLE = 8  # announced-only messages fetched before a fold
MAX_PULL_BYTES_PER_CYCLE = 1 << 30  # and their bytes, all together
MAX_KNOWN_PEERS = 1024  # the peer table (least recently seen dropped)
MAX_SENDERS_PER_PERIOD = 64  # distinct authors of knowledge folded in one period
MAX_KEPT_EXAMPLES = 4 * MAX_SENDERS_PER_PERIOD  # knowledge messages whose weight the ledger may need
SERVE_QUEUE_PER_PEER = PULL_WINDOW * BLOB_CHUNK  # blob bytes waiting to be sent to one peer
SERVE_QUEUE_TOTAL = 256 << 20  # ... and to all peers together
SEQ_MARGIN = 10_000  # sequence numbers a crash may have used since the last save
DIALS_PER_MINUTE = 8  # peers learnt from other peers that this node dials
# Each period sends every neighbour up to 4 frames (hello, peer list, knowledge); a peer admits 20 a
# second from one connection (GateConfig.frames_per_s) before it strikes. 0.5 s keeps under half that.
MIN_PERIOD = 0.5

log = logging.getLogger("manymodels.node")


@dataclass
class DaemonConfig:
    recipe: LearnerRecipe = field(default_factory=LearnerRecipe)
    exchange: str = "weights"
    rule: str = "fedavg"
    logit_rule: str = "logit-probmean"
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    period: float = 5.0  # seconds between learning cycles
    local_epochs: int = 1
    reputation: float = 0.0
    mdns: bool = False  # find peers on the local network by multicast DNS
    # A message larger than this is announced to the neighbours, not pushed: each pulls the newest
    # one by digest when it is about to fold, so a 100 MB model crosses a link once per fold at most.
    push_limit: int = 1 << 20
    share: str = "all"  # who gets this node's knowledge: all, reciprocal[:N] or allowlist:FILE
    metrics: str = ""  # HOST:PORT to serve Prometheus metrics on ("": none)
    compress: str = DEFAULT_CODECS["weights"]  # the codec weights travel in
    compress_logits: str = DEFAULT_CODECS["logits"]  # the codec logits travel in
    # reach (p2p/reach.py): offer the relay service, its limits, and bulk bytes an hour over relays
    relay: bool = False
    relay_reservations: int = ReachConfig.relay_reservations
    relay_circuits: int = ReachConfig.relay_circuits
    relay_circuit_bytes: int = ReachConfig.relay_circuit_bytes
    relay_circuit_seconds: int = ReachConfig.relay_circuit_seconds
    relay_bulk: int = ReachConfig.relay_bulk

    def to_json(self) -> dict:
        return {**asdict(self), "recipe": self.recipe.to_json()}

    @classmethod
    def from_json(cls, value: dict) -> DaemonConfig:
        return cls(**{**value, "recipe": LearnerRecipe.from_json(value["recipe"])})

    def reach_config(self) -> ReachConfig:
        try:
            return ReachConfig(relay=self.relay, relay_reservations=self.relay_reservations,
                               relay_circuits=self.relay_circuits, relay_circuit_bytes=self.relay_circuit_bytes,
                               relay_circuit_seconds=self.relay_circuit_seconds, relay_bulk=self.relay_bulk)
        except ValueError as exc:
            raise SpecError(str(exc)) from None

    def node_spec(self) -> NodeSpec:
        """The node this config runs, checked; a SpecError is one line for the user."""
        if not self.period >= MIN_PERIOD:  # saved, a period <= 0 would stop every later start (or spin)
            raise SpecError(f"--period must be at least {MIN_PERIOD:g} s (each period sends every neighbour up "
                            f"to 4 messages, and peers admit 20 a second), got {self.period:g}")
        if self.push_limit < 0:
            raise SpecError(f"--push-limit must be at least 0 bytes, got {self.push_limit}")
        self.reach_config()
        if self.recipe.client_app and self.exchange != "weights":
            raise SpecError(f"a daemon runs a Flower client with --exchange weights (--exchange {self.exchange} "
                            "needs the built-in datasets, or the simulator's --probe for a client's distill hooks)")
        return NodeSpec.parse(self.recipe, exchange=self.exchange, rule=self.rule, logit_rule=self.logit_rule,
                              reputation=self.reputation, local_epochs=self.local_epochs, share=self.share,
                              compress=self.compress, compress_logits=self.compress_logits)


def now_ms() -> int:
    return int(time.time() * 1000)


class DaemonNode(Node):
    """A node that also keeps a table of peers and serves its sealed messages by digest."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.peers: dict[str, dict] = {}
        self.blobs: dict[bytes, bytes] = {}  # payload digest -> the sealed message, for pulls
        self.remote_models: dict[str, dict] = {}  # peer id -> what its latest weights were
        self.pulls: dict[bytes, tuple[str, trio.MemorySendChannel]] = {}  # digest -> (peer, chunks)
        # (author, kind) -> the newest Announce a neighbour sent us instead of the message, to pull
        self.unpushed: dict[tuple[str, str], Announce] = {}
        self.pulled = 0  # messages fetched by digest before a fold
        self.discovered = lambda addrs: None  # the daemon dials peers it learns of
        self.may_serve = lambda peer, nbytes: True  # the transport's gate meters serving
        self.senders: set[bytes] = set()  # authors of knowledge received this period
        self.examples: dict[bytes, int] = {}  # digest -> examples behind a knowledge message (the ledger's weights)
        self._handlers = {"blob_request": self._on_blob_request, "blob_response": self._on_pull_answer,
                          "error": self._on_pull_answer, "hello": self._on_hello, "peers": self._on_peers,
                          "announce": self._on_direct_announce}

    def peer(self, address: str) -> dict:
        entry = self.peers.pop(address, None) or {"id": address, "addrs": [], "first_seen": now_ms(),
                                                   "last_seen": 0, "accepted": 0, "offered": {}}
        self.peers[address] = entry  # most recently seen last
        while len(self.peers) > MAX_KNOWN_PEERS:
            del self.peers[next(iter(self.peers))]
        return entry

    def forget(self, address: str) -> None:
        """A blocked peer leaves no entry behind."""
        self.peers.pop(address, None)
        self.remote_models.pop(address, None)
        for key in [k for k in self.unpushed if k[0] == address]:
            del self.unpushed[key]

    def handle(self, sender_address: str, message: Message) -> None:
        """Control messages by kind through a table; knowledge to the exchange."""
        entry = self.peer(sender_address)
        entry["last_seen"] = now_ms()
        entry["accepted"] += 1
        handler = self._handlers.get(message.kind)
        if handler is not None:
            return handler(sender_address, message)
        if message.sender not in self.senders and len(self.senders) >= MAX_SENDERS_PER_PERIOD:
            return self.refuse("too_many_senders")
        self.senders.add(message.sender)
        self.examples[message.digest] = examples_behind(message.payload)
        while len(self.examples) > MAX_KEPT_EXAMPLES:
            del self.examples[next(iter(self.examples))]
        payload = message.payload
        entry["offered"][payload.KIND] = getattr(payload, "model", "")
        if isinstance(payload, Weights):
            self.remote_models[message.sender_id] = {
                "peer": message.sender_id, "model": payload.model, "version": payload.version,
                "num_examples": payload.num_examples, "digest": message.digest.hex(), "bytes": message.size,
                "received": now_ms()}
        super().handle(sender_address, message)

    def fold(self) -> bool:
        self.senders = set()
        return super().fold()

    def _on_blob_request(self, sender_address: str, message: Message) -> None:
        self._serve_blob(sender_address, message.payload)

    def _on_pull_answer(self, sender_address: str, message: Message) -> None:
        payload = message.payload
        wanted = payload.digest if isinstance(payload, BlobResponse) else _hex(payload.message)
        peer, channel = self.pulls.get(wanted, (None, None))
        if peer == sender_address:  # only the peer asked answers a pull
            try:
                channel.send_nowait(payload)
            except trio.WouldBlock:
                pass  # more than was asked for: dropped (the pull then waits for its timeout)

    def _on_hello(self, sender_address: str, message: Message) -> None:
        entry = self.peers[sender_address]
        # only addresses that name the sender: a peer speaks for itself
        entry["addrs"] = sorted(a for a in message.payload.addrs if a.endswith(f"/p2p/{sender_address}"))[:8]
        entry["agent"] = message.payload.agent

    def _on_peers(self, sender_address: str, message: Message) -> None:
        self.discovered(message.payload.addrs)

    def _on_direct_announce(self, sender_address: str, message: Message) -> None:
        """Sent to us instead of a message too big to push (its author is the sender: the
        transport's author check saw to it)."""
        payload = message.payload
        key = (message.sender_id, payload.content)
        if key not in self.unpushed or payload.version > self.unpushed[key].version:
            self.unpushed[key] = payload
            if len(self.unpushed) > MAX_REMOTE_MODELS:
                del self.unpushed[next(iter(self.unpushed))]
        self.on_announce(message)

    def on_announce(self, message: Message) -> None:
        """A verified announcement, from gossipsub (Discovery checked signature, digest, replay,
        and that its author is the gossipsub author) or sent directly by its author: remember who
        holds which model, by digest."""
        a = message.payload
        author = message.sender_id
        if message.sender in self.banned:
            return
        known = self.remote_models.get(author)
        if known is not None and known["version"] > a.version:
            return  # an older announcement arriving late
        self.remote_models[author] = {
            "peer": author, "model": a.model, "version": a.version, "num_examples": a.num_examples,
            "digest": a.digest.hex(), "bytes": a.size, "content": a.content, "received": now_ms(), "via": "announce"}
        if len(self.remote_models) > MAX_REMOTE_MODELS:
            oldest = min(self.remote_models.values(), key=lambda m: m["received"])
            del self.remote_models[oldest["peer"]]

    def to_pull(self) -> list[tuple[str, Announce]]:
        """(author, announcement) of the newest unpushed messages this node's exchange would use,
        in random order within the per-cycle limits (so no neighbour is always left out); taken off
        the list: a failed pull is not retried, the next announcement brings a newer one."""
        pending, self.unpushed = self.unpushed, {}
        usable = [(author, a) for (author, kind), a in pending.items()
                  if kind in self.exchange.consumes and (kind != "weights" or a.model == self.learner.architecture)]
        random.shuffle(usable)
        chosen, budget = [], MAX_PULL_BYTES_PER_CYCLE
        for author, a in usable[:MAX_PULLS_PER_CYCLE]:
            if a.size <= budget:
                chosen.append((author, a))
                budget -= a.size
        return chosen

    async def fetch(self, peer: str, wanted: bytes, window: int = PULL_WINDOW, size: int | None = None) -> bytes:
        """The sealed message with this payload digest, from `peer`, in chunks with up to `window`
        requests in flight (not yet verified: the caller opens the envelope); `size`: as announced."""
        if wanted in self.pulls:
            raise ValueError(f"{wanted.hex()} is being pulled already")
        send, receive = trio.open_memory_channel(2 * window)
        self.pulls[wanted] = (peer, send)
        chunks: dict[int, bytes] = {}
        pending: set[int] = set()
        total, ahead = None, 0

        def ask(offset: int) -> None:
            pending.add(offset)
            self.transport.send(peer, self.seal(BlobRequest(wanted, offset, BLOB_CHUNK)))
        try:
            with trio.fail_after(PULL_TIMEOUT):
                ask(0)
                while pending:
                    chunk = await receive.receive()
                    if isinstance(chunk, Error):
                        raise ValueError(f"{peer} does not hold {wanted.hex()} any more ({chunk.code})")
                    if chunk.offset not in pending:
                        continue  # not an answer to a request outstanding: dropped (§11.4)
                    if total is not None and chunk.total != total:
                        raise ValueError("the peer's chunks disagree on the blob's length")
                    if chunk.total > MAX_ENVELOPE_BYTES:
                        raise ValueError(f"the peer offers {chunk.total} bytes, more than any message may have")
                    if size is not None and chunk.total != size:
                        raise ValueError(f"the peer offers {chunk.total} bytes, it announced {size}")
                    if len(chunk.data) != min(BLOB_CHUNK, chunk.total - chunk.offset):
                        raise ValueError("the peer sent a chunk of the wrong length")
                    total = chunk.total
                    pending.discard(chunk.offset)
                    chunks[chunk.offset] = chunk.data
                    while ahead + BLOB_CHUNK < total and len(pending) < window:
                        ahead += BLOB_CHUNK
                        ask(ahead)
        except trio.TooSlowError:
            raise ValueError(f"{peer} did not serve {wanted.hex()} within {PULL_TIMEOUT} s") from None
        finally:
            del self.pulls[wanted]
        return b"".join(chunks[offset] for offset in sorted(chunks))

    async def pull_unpushed(self, period: float) -> None:
        """Fetch what neighbours announced but did not push (it was over their push limit), in
        parallel, within one period; the bytes are then verified like any pushed message."""
        async def fetch(author: str, announce: Announce) -> None:
            try:
                data = await self.fetch(author, announce.digest, size=announce.size)
            except ValueError:  # gone, too slow or wrong: the next announcement brings a newer one
                return self.refuse("pull_failed")
            self.pulled += 1
            # every check of a pushed message (author, replay window, clock), and the digest asked for
            message = await trio.to_thread.run_sync(
                functools.partial(self.verify, author, data, author=author, digest=announce.digest))
            if message is None:
                return
            try:
                self.handle(author, message)
            except Exception as exc:  # noqa: BLE001 -- as the transport's receiver: log, count, go on
                log.warning("handling a message pulled from %s: %s: %s", author, type(exc).__name__, exc)
                self.refuse("pull_not_handled")

        with trio.move_on_after(max(period, 1.0)):
            async with trio.open_nursery() as nursery:
                for author, announce in self.to_pull():
                    nursery.start_soon(fetch, author, announce)

    def _serve_blob(self, sender_address: str, request: BlobRequest) -> None:
        """One chunk, metered: per peer by the gate's byte budget, and by what already waits to be
        sent (to this peer and to all); over either, a `busy` error instead of the bytes."""
        if not self.sharing.shares_with(sender_address, self.version):  # every blob is knowledge
            self.stats.withheld += 1
            self.transport.send(sender_address, self.seal(Error("withheld", request.digest.hex())))
            return
        blob = self.blobs.get(request.digest)
        if blob is None:
            self.transport.send(sender_address, self.seal(Error("not_found", request.digest.hex())))
            return
        end = min(len(blob), request.offset + min(request.length, BLOB_CHUNK))
        size = max(0, end - request.offset)
        queued = getattr(self.transport, "queued_bytes", lambda peer=None: 0)
        if (queued(sender_address) + size > SERVE_QUEUE_PER_PEER or queued() + size > SERVE_QUEUE_TOTAL
                or not self.may_serve(sender_address, size)):
            self.refuse("serve_busy")
            self.transport.send(sender_address, self.seal(Error("busy", request.digest.hex())))
            return
        chunk = BlobResponse(request.digest, request.offset, len(blob), blob[request.offset:end])
        self.transport.send(sender_address, self.seal(chunk))

    def keep_blob(self, data: bytes) -> bytes:
        sealed = open_envelope(data, now_ms=now_ms())  # our own message: for its digest
        self.blobs[sealed.digest] = data
        while len(self.blobs) > MAX_BLOBS:
            self.blobs.pop(next(iter(self.blobs)))
        return sealed.digest


class Daemon:
    def __init__(self, home: Home, config: DaemonConfig) -> None:
        self.home = home
        self.config = config
        self.identity = home.identity()
        self.started = now_ms()
        self.history: list[dict] = []
        self.provenance: list[dict] = []
        self.ledger = Ledger()  # what each peer's knowledge did to the model
        self.stopping = trio.Event()
        self.discovery: Discovery | None = None
        self.reach: Reach | None = None
        self._dials: list[float] = []  # when peer-exchange dials happened (the last minute's)
        self._dialing: set[str] = set()  # peers being dialed now
        self.inbound: Inbound | None = None
        self.listening: list[str] = []  # our multiaddrs, saved so that a restart keeps its ports
        self._counted = _counts(NodeStats())  # at the last fold (or the start)
        self.saved: dict = {}  # state.json as the last run left it
        self.learner: WorkerLearner | None = None
        self.node: DaemonNode | None = None  # once the learner has loaded
        self.ready = trio.Event()  # ... which this says
        self.metrics = Metrics()

    # --- construction -----------------------------------------------------------------------
    @functools.cached_property
    def spec(self) -> NodeSpec:
        return self.config.node_spec()

    def _node_data(self, learner: WorkerLearner) -> NodeData:
        """What the exchange is built from: the worker holds the private data, the probe set and the
        generator (the learner samples through it)."""
        recipe = self.config.recipe
        return NodeData(learner.num_classes, learner.class_counts,
                        lambda: ProbeSet(f"{recipe.dataset}:{recipe.probe_size}", learner.probe_x()),
                        lambda: learner, learner.input_shape, learner.value_range, np.random.default_rng())

    def _fit_config(self) -> dict:
        """What the rule adds to a Flower client's train config (FedProx's proximal_mu), as a Flower
        server would; nothing for the built-in learners."""
        if not self.config.recipe.client_app:
            return {}
        return self.spec.rule.client_config

    def _restore(self, node: DaemonNode, state: dict) -> None:
        """Take up where the saved `state` (state.json, and the checkpoint) left off."""
        # Resume above the last saved sequence number, with a margin for messages sent after the
        # last save, and at least at the clock in ms: peers' replay windows remember what they saw.
        node.seq = max(state.get("seq", 0) + SEQ_MARGIN, now_ms())
        node.version = state.get("version", 0)
        node.guard = ReplayGuard.from_state(
            {bytes.fromhex(k): (h, int(seen, 16)) for k, (h, seen) in state.get("replay", {}).items()})
        node.peers = {p["id"]: p for p in state.get("peers", [])}
        self.provenance = state.get("provenance", [])
        self.history = state.get("history", [])
        node.stats.restore(state.get("stats", {}))  # counters run on across restarts
        self.ledger = Ledger.from_json(state.get("ledger", {}))
        node.pulled = state.get("stats", {}).get("pulled", 0)
        if self.config.recipe.privacy.on and state.get("dp_steps"):  # the restored model spent them
            node.learner.resume_privacy(state["dp_steps"])
        self._counted = _counts(node.stats)
        checkpoint = self.home.load_checkpoint()
        if checkpoint is not None and checkpoint.model == node.learner.architecture:
            node.learner.set_weights(checkpoint.tensors)
            accuracy = node.learner.evaluate_test()["accuracy"]
            self.history.append({"version": checkpoint.version, "time": now_ms(), "accuracy": round(accuracy, 4),
                                 "restored": True})

    def save(self, node: DaemonNode) -> None:
        # The checkpoint first: the state's history then always covers the saved model's version.
        if node.learner.supports_weights:
            self.home.save_checkpoint(Weights(node.learner.architecture, node.version, node.learner.num_examples,
                                              node.learner.get_weights()))
        self.home.write_json(self.home.state_file, {
            "seq": node.seq,
            "version": node.version,
            "listening": self.listening,
            "replay": {k.hex(): [h, format(seen, "x")] for k, (h, seen) in node.guard.to_state().items()},
            "peers": list(node.peers.values()),
            "provenance": self.provenance[-100:],
            "history": self.history[-1000:],
            "stats": {**node.stats.to_json(), "pulled": node.pulled},
            "ledger": self.ledger.to_json(),
            **({"dp_steps": node.privacy["dp_steps"]} if node.privacy else {}),
        })

    # --- the learning cycle, in a thread ------------------------------------------------------
    def _introductions(self, node: DaemonNode, transport) -> list[tuple[bytes, str]]:
        """Hello (who I am, where I listen) and the addresses of the peers I know."""
        hello = Hello("manymodels/" + _version(), transport.listen_addrs(), [self.config.exchange],
                      [node.learner.architecture])
        known = [a for p in node.peers.values() for a in p["addrs"][:2]][:64]
        return [(node.seal(hello), "hello"), (node.seal(PeerExchange(known)), "peers")]

    def _train(self, node: DaemonNode) -> list[tuple[bytes, str]]:
        """Train, and seal what to publish (sending stays on the loop)."""
        node.train(self.spec.local_epochs)
        return node.publication()

    def _fold(self, node: DaemonNode) -> None:
        """Fold what arrived during the period, evaluate the result, and save it."""
        with self.metrics.fold_seconds.time():
            # the ledger credits the fold's change; a period with nothing received does without this
            # evaluation (it would draw on the learner's randomness: an idle node trains as alone)
            before = node.learner.evaluate_test()["accuracy"] if node.senders else None
            folded = node.fold()
            if folded.changed:
                self.provenance.append({"version": node.version, "time": now_ms(), "folded": folded.senders,
                                        "digests": [digest.hex() for _, digest in folded.inputs]})
            accuracy = node.learner.evaluate_test()["accuracy"]
            if folded.changed and folded.inputs and before is not None:
                self.ledger.record(node.version, before, accuracy,
                                   [(sender, node.examples.get(digest, 0)) for sender, digest in folded.inputs],
                                   {peer: node.reputation.scores.get(_key_of(peer, node)) for peer in folded.senders})
            self.history.append({"version": node.version, "time": now_ms(), "accuracy": round(accuracy, 4)})
            self.save(node)
        log.info("%s", self._period(node, folded, accuracy))

    def _period(self, node: DaemonNode, folded: Folded, accuracy: float) -> str:
        """One line for the period just folded: what went into the model and from whom (peer ids
        by their last 8 characters), the accuracy, the bytes, and the period's rejections by reason."""
        now = _counts(node.stats)
        before, self._counted = self._counted, now
        folds = (f"folded {len(folded.inputs)} from {', '.join(p[-8:] for p in folded.senders)}" if folded.inputs
                 else "folded nothing")
        parts = [f"version {node.version}: {folds}", f"accuracy {accuracy:.3f}",
                 f"sent {size(now[0] - before[0])}, received {size(now[1] - before[1])}"]
        for name, counts in (("rejected", now[2] - before[2]), ("refused", now[3] - before[3])):
            if counts:
                parts.append(f"{name} " + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())))
        return "; ".join(parts)

    async def _cycles(self, node: DaemonNode, transport) -> None:
        """train -> publish -> let the period pass while messages arrive -> fold, evaluate, save."""
        while True:
            node.neighbours = transport.connected_peers()
            for data, kind in self._introductions(node, transport):
                node.send_to_neighbours(data, kind)
            for data, kind in await trio.to_thread.run_sync(self._train, node):
                held = set(node.blobs)
                digest = node.keep_blob(data)
                announce = self._announce(node, digest, kind, len(data), held)
                if len(data) <= self.config.push_limit:
                    node.send_to_neighbours(data, kind)
                else:
                    node.send_to_neighbours(announce, "announce")
            await trio.sleep(self.config.period)
            await node.pull_unpushed(self.config.period)
            await trio.to_thread.run_sync(self._fold, node)

    def _announce(self, node: DaemonNode, digest: bytes, kind: str, size: int, held: set[bytes]) -> bytes:
        """Tell the network (gossipsub, paced; DHT provider record) that we hold this blob; the
        sealed announcement is returned, for the neighbours of a message too big to push."""
        announce = node.seal(Announce(digest, kind, node.learner.architecture, node.version,
                                      node.learner.num_examples, size))
        discovery = self.discovery
        if discovery is not None:
            for gone in held - set(node.blobs):  # evicted by keep_blob: no longer served
                discovery.unprovide(gone)
            discovery.publish_announce(announce)
            discovery.provide_soon(digest)
        return announce

    async def _dial(self, node: DaemonNode, transport, addrs: list[str]) -> None:
        """Dial peers another peer told us of: only peers this node can attribute (it holds a
        message they signed: an announcement, or a hello on an earlier connection), and at most
        DIALS_PER_MINUTE, so a peer's list cannot point this node at arbitrary hosts. A peer's
        addresses are dialed side by side, the first to connect wins: a home node's LAN address
        times out from elsewhere while its address through a relay connects."""
        connected = set(transport.connected_peers()) | {node.id}
        known = set(node.remote_models) | {p for p, entry in node.peers.items() if "agent" in entry}
        by_peer: dict[str, list[str]] = {}
        for addr in addrs[:16]:
            by_peer.setdefault(addr.rsplit("/p2p/", 1)[-1], []).append(addr)
        for peer, its_addrs in by_peer.items():
            if peer in connected or peer in self._dialing or peer not in known or len(connected) > MAX_PEERS:
                continue
            now = time.monotonic()
            self._dials = [t for t in self._dials if now - t < 60]
            if len(self._dials) >= DIALS_PER_MINUTE:
                return
            self._dials.append(now)
            self._dialing.add(peer)
            try:
                if await _first_to_connect(transport, its_addrs):
                    connected.add(peer)
            finally:
                self._dialing.discard(peer)

    # --- control commands ----------------------------------------------------------------------
    async def _control(self, transport, request: dict):
        cmd = request["cmd"]
        if cmd == "status":
            return self._status(transport)
        if cmd == "stop":
            self.stopping.set()
            return {"stopping": self.identity.peer_id}
        await self.ready.wait()  # the other commands need the node: they wait while the learner loads
        node = self.node
        if cmd == "peers":
            connected = set(transport.connected_peers())
            return [{**p, "connected": p["id"] in connected, "rejected": node.stats.rejected_from[p["id"]],
                     "path": transport.path(p["id"]), "bytes_by_path": dict(transport.path_bytes.get(p["id"], {})),
                     **transport.gate.standing(p["id"], time.monotonic()),
                     "reputation": node.reputation.scores.get(_key_of(p["id"], node)),
                     "banned": _key_of(p["id"], node) in node.banned}
                    for p in sorted(node.peers.values(), key=lambda p: p["id"])]
        if cmd == "connect":
            peer = await transport.connect(request["addr"])
            node.peer(peer)["addrs"] = sorted(set(node.peer(peer)["addrs"]) | {request["addr"]})
            if self.discovery is not None:
                self.discovery.kick()
            return {"connected": peer}
        if cmd == "models":
            local = {"peer": node.id, "model": node.learner.architecture, "version": node.version,
                     "digest": next(reversed(node.blobs)).hex() if node.blobs else None, "local": True}
            return [local, *sorted(node.remote_models.values(), key=lambda m: m["peer"])]
        if cmd == "pull":
            return await self._pull_from_any(node, request.get("peer"), bytes.fromhex(request["digest"]))
        if cmd == "value":
            return {"peers": self.ledger.table(), "folds": self.ledger.folds[-10:]}
        raise ValueError(f"unknown command {cmd!r}")

    def _status(self, transport) -> dict:
        """What `node status` shows. While the learner loads ("state": "loading"), the numbers are
        the saved state's: counters, version and accuracy as the last run left them."""
        node = self.node
        if node is None:
            stats = NodeStats()
            stats.restore(self.saved.get("stats", {}))
            recipe = self.config.recipe
            model, version = recipe.client_app or recipe.model, self.saved.get("version", 0)
            pulled, history = self.saved.get("stats", {}).get("pulled", 0), self.saved.get("history", [])
        else:
            stats, model, version, pulled, history = (node.stats, node.learner.architecture, node.version,
                                                      node.pulled, self.history)
        return {"id": self.identity.peer_id, "state": "running" if node else "loading",
                "addrs": transport.listen_addrs(), "peers": len(transport.connected_peers()),
                "model": model, "exchange": self.config.exchange, "rule": self.config.rule,
                "compress": self.config.compress, "compress_logits": self.config.compress_logits, "version": version,
                "accuracy": history[-1]["accuracy"] if history else None,
                "uptime_s": round((now_ms() - self.started) / 1000, 1), "home": str(self.home.path),
                "messages_accepted": stats.messages_accepted, "rejected": dict(stats.rejected),
                "refused": dict(stats.refused), "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
                "pulled": pulled, "withheld": stats.withheld, "share": self.config.share,
                "gate": {**transport.gate.events, "blocked_now": transport.gate.blocked_count(time.monotonic()),
                         "inbound_dropped": self.inbound.dropped if self.inbound else 0},
                "frames_refused": transport.stats.frames_refused(),
                "discovery": self._discovery_status(), "privacy": self._privacy_status(),
                "reach": self.reach.status() if self.reach is not None else None}

    def _privacy_status(self) -> dict | None:
        """The DP settings and what this run has spent (None: no DP): DP-SGD's learner, or with the
        synthetic exchange the noisy class moments (`mechanism`)."""
        p = self.config.recipe.privacy
        if not p.on:
            return None
        spent = (self.node.privacy if self.node else None) or {}
        return {"mechanism": "moments" if self.spec.moments.on else "dp-sgd", "epsilon": spent.get("epsilon"),
                "delta": p.delta, "budget": p.epsilon or None,
                "noise_multiplier": spent.get("noise_multiplier", p.noise or None), "clip": p.clip,
                "publishing": self.node is None or self.node.budget_spent_at is None}

    def _discovery_status(self) -> dict | None:
        d = self.discovery
        if d is None:
            return None
        s = d.stats
        return {"dht_peers": len(d.known_peers()), "announces_published": s.announces_published,
                "announces_received": s.announces_delivered, "announces_rejected": dict(s.rejected),
                "publish_dropped": dict(s.publish_dropped), "provides": s.provides, "lookups": s.lookups,
                "dials": s.dials}

    async def _pull_from_any(self, node: DaemonNode, peer: str | None, wanted: bytes) -> dict:
        """Pull from the named peer, or (peer "any" or none) from those known to hold the digest:
        announcers first, then the DHT's providers. Each candidate's bytes are verified by _pull."""
        if peer not in (None, "", "any"):
            return await self._pull(node, peer, wanted)
        if wanted in node.blobs:  # our own message: nothing to fetch
            return self._keep_pulled(node.blobs[wanted], wanted)
        candidates = [m["peer"] for m in node.remote_models.values() if m["digest"] == wanted.hex()]
        if self.discovery is not None:
            candidates += await self.discovery.find_providers(wanted)
        candidates = [p for p in dict.fromkeys(candidates) if p != node.id][:PULL_CANDIDATES]
        if not candidates:
            raise ValueError(f"no peer is known to hold {wanted.hex()}")
        errors = []
        for candidate in candidates:
            try:
                return await self._pull(node, candidate, wanted)
            except ValueError as exc:
                errors.append(f"{candidate}: {exc}")
        raise ValueError("; ".join(errors))

    async def _pull(self, node: DaemonNode, peer: str, wanted: bytes) -> dict:
        """Fetch a sealed message by its payload digest; verify it, then keep it in blobs/."""
        return self._keep_pulled(await node.fetch(peer, wanted), wanted)

    def _keep_pulled(self, data: bytes, wanted: bytes) -> dict:
        """Verify a pulled message (signature, payload digest, clock skew: every check of §7 but
        the replay window, which is the node's own) and write it to blobs/."""
        message = open_envelope(data, now_ms=now_ms(), guard=ReplayGuard())
        if message.digest != wanted:
            raise ValueError("the pulled message does not have the digest asked for")
        path = self.home.path / "blobs" / f"{wanted.hex()}.msg"
        atomic_write(path, data)
        return {"digest": wanted.hex(), "kind": message.kind, "author": message.sender_id, "bytes": len(data),
                "path": str(path)}

    # --- run --------------------------------------------------------------------------------
    async def run(self, transport_factory) -> None:
        """Run until `stop`. `transport_factory(identity, listen=[...])` gives the transport. The
        network comes up, and the control socket answers `status`, before the worker process has
        loaded the learner (seconds: it imports torch); the other commands wait for it."""
        bound_libp2p_logs()  # from its first record: the DHT is not the first part to log
        atomic_write(self.home.pid_file, f"{os.getpid()}\n".encode())
        self.saved = self.home.read_json(self.home.state_file, {})
        listen = listen_addrs(self.config.listen, self.saved.get("listening", []))
        transport = transport_factory(self.identity, listen=listen)
        try:
            discovery_config = DiscoveryConfig(mdns=self.config.mdns)
            # The state is saved before the network closes, and the network gets CLOSE_S to close: a
            # library service that hangs on close must not keep a stopped node from exiting.
            with trio.CancelScope() as closing:
                async with transport.running(), Discovery(transport, config=discovery_config).running() as discovery, \
                        Reach(transport, self.config.reach_config()).running() as reach:
                    self.discovery, self.reach = discovery, reach
                    async with trio.open_nursery() as nursery:
                        node = await self._serve(transport, discovery, nursery)
                        await self.stopping.wait()
                        nursery.cancel_scope.cancel()
                    await trio.to_thread.run_sync(self.save, node)
                    closing.deadline = trio.current_time() + CLOSE_S
            if closing.cancelled_caught:
                log.warning("the network services did not close within %g s; exiting anyway", CLOSE_S)
            # the last line, after whatever the closing network services had to say
            log.info("%s stopped at version %d (state saved)", node.id, node.version)
        finally:
            self.metrics.stop()
            if self.learner is not None:
                self.learner.close()
            self.home.pid_file.unlink(missing_ok=True)

    async def _serve(self, transport, discovery: Discovery, nursery: trio.Nursery) -> DaemonNode:
        """The control socket, the bootstrap peers, the learner and the node's cycles, in `nursery`."""
        self.listening = transport.listen_addrs()
        await nursery.start(serve_control, self.home.socket, lambda request: self._control(transport, request))
        log.info("%s listening on %s", self.identity.peer_id, " ".join(self.listening))
        for addr in self.config.bootstrap:
            try:
                await transport.connect(addr)
            except (ValueError, ConnectionError) as exc:  # a bootstrap peer may be down
                log.warning("bootstrap %s: %s", addr, exc)
        discovery.kick()  # the DHT learns the rest of the network through them
        node = await self._load(transport, discovery, nursery)
        nursery.start_soon(self._cycles, node, transport)
        return node

    async def _load(self, transport, discovery: Discovery, nursery: trio.Nursery) -> DaemonNode:
        """Start the worker, build the node on it, take up the saved state, and put it behind the
        transport's trust boundary; then the commands that need the node are answered."""
        self.learner = await trio.to_thread.run_sync(WorkerLearner, self.spec.learner, self._fit_config(),
                                                     self.spec.moments)
        node = build_node(self.spec, self.identity, self.learner, transport, now_ms, self._node_data(self.learner),
                          node_class=DaemonNode)
        await trio.to_thread.run_sync(self._restore, node, self.saved)
        self.inbound = bind(node, transport, nursery, discovery)
        discovery.banned = node.banned
        discovery.on_announce = node.on_announce
        discovery.on_peer = lambda peer, addrs: node.peer(peer).update(addrs=sorted(addrs)[:8])
        node.discovered = lambda addrs: nursery.start_soon(self._dial, node, transport, list(addrs))
        node.discovered([a for p in node.peers.values() for a in p["addrs"][:2]])  # back after a restart
        self.metrics.serve(self.config.metrics, self, node, transport)
        self.node = node
        self.ready.set()
        log.info("%s runs %s (%s, rule %s)", node.id, node.learner.architecture, self.config.exchange,
                 self.config.rule)
        return node


def bind(node: DaemonNode, transport, nursery: trio.Nursery, discovery: Discovery | None = None) -> Inbound:
    """Put a node behind the trust boundary of a running libp2p transport: frames capped at the
    largest message the node accepts, verified off the loop (a direct message must be signed by
    the peer Noise authenticated), failures striking their peer at the transport's gate, a
    blocked peer forgotten by the node and the DHT, serving metered by the gate."""
    transport.max_frame = largest_accepted(node)
    inbound = Inbound(node, max_bytes=2 * transport.max_frame)
    transport.set_receiver(inbound.submit)
    node.on_reject = transport.strike
    node.may_serve = lambda peer, nbytes: transport.gate.may_serve(peer, nbytes, time.monotonic())
    transport.on_block.append(node.forget)
    if discovery is not None:
        transport.on_block.append(discovery.forget)
    nursery.start_soon(inbound.run)
    return inbound


def largest_accepted(node: Node) -> int:
    """The largest frame this node reads: a pulled chunk, or the largest knowledge message its
    exchange folds (weights: exactly its own model's tensors; logits: one row per probe input;
    synthetic: the exchange's sample cap)."""
    return max(BLOB_CHUNK, node.exchange.largest_payload(node.view)) + ENVELOPE_OVERHEAD + 4096


def _counts(stats: NodeStats) -> tuple[int, int, Counter, Counter]:
    """Bytes sent and received, rejections and refusals by reason: what the period line counts.
    Copies: the verifier thread counts while this runs."""
    return stats.bytes_sent, stats.bytes_received, Counter(dict(stats.rejected)), Counter(dict(stats.refused))


async def _first_to_connect(transport, addrs: list[str]) -> bool:
    """Dial these addresses of one peer side by side; True once one connects (the others are cancelled)."""
    connected = False

    async def dial(addr: str, cancel_scope: trio.CancelScope) -> None:
        nonlocal connected
        try:
            await transport.connect(addr)
        except (ValueError, ConnectionError):
            return  # stale or unreachable: another address, or another peer, may know better
        connected = True
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(dial, addr, nursery.cancel_scope)
    return connected


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def _version() -> str:
    from importlib.metadata import version

    return version("manymodels")


def _key_of(address: str, node: DaemonNode) -> bytes | None:
    for key in list(node.reputation.scores) + list(node.banned):
        if peer_id(key) == address:
            return key
    return None
