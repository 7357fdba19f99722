"""Reach: whether this node can be dialed, and how it is reached when it cannot.

    async with Libp2pTransport(identity, listen=[...]).running() as transport:
        async with Reach(transport, ReachConfig(relay=True)).running() as reach:
            reach.status()     # {"reachability": "private", "reservations": [...], ...}

Built on py-libp2p 0.8.1's circuit relay v2, DCUtR and AutoNAT, for a running ``Libp2pTransport``:

* **Reachability** (AutoNAT v1, ``/libp2p/autonat/1.0.0``): every ``check_s`` seconds (sooner while
  unknown) a few directly connected peers are asked to dial us back at the addresses we believe
  we have: our listen addresses, or, once a peer has told us what address it sees us at (identify),
  that IP with our listen port (where a home router that keeps source ports maps us). A peer that
  reached us counts for *public*, one whose dial failed for *private*; the newest ``VERDICTS``
  answers decide (ties: private). We answer such requests too, for addresses on the asker's observed
  IP only, at most one per peer per ``DIALBACK_EVERY`` s. py-libp2p's own server dials back with
  ``host.connect``, which returns at once when the asker is connected -- and it always is, since it
  asked -- so every asker would be public. Ours opens a TCP connection of its own and completes a
  Noise handshake with the asker's key (from a throwaway key, no muxer after it: the asker's swarm
  never counts it as a connection).
* **Relay service** (``relay=True``): the circuit relay v2 hop protocol, within limits: at most
  ``relay_reservations`` peers hold a reservation, each with at most ``relay_circuits`` circuits
  open, each circuit carrying at most ``relay_circuit_bytes`` bytes (both ways together) for at most
  ``relay_circuit_seconds`` seconds; a circuit over a limit is reset. The relay sees Noise ciphertext only.
* **Reservations**: a *private* node reserves a slot on up to ``max_relays`` connected peers that
  offer the hop protocol and advertises ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<us>`` in its
  addresses (hello, peer exchange, status); the transport dials such addresses through the relay.
* **Hole punching** (DCUtR, ``/libp2p/dcutr``): py-libp2p drives it on every relayed connection; a
  punched connection is direct, new streams take it, and the relayed one is closed after a minute.
* **Bulk over relays**: frames above the transport's ``small_frame`` (models, pulled chunks) cross
  a relayed connection only within ``relay_bulk`` bytes an hour (a token bucket; 0: never).
  Small messages (hello, announcements, small models) always may.

py-libp2p's internals this leans on (0.8.1): the relay transport's ``_make_reservation`` and
``_reservations``, the relay's ``resource_manager._reservations`` and ``_active_relays`` (counted
in ``status``), DCUtR's ``_get_observed_addrs`` and ``_perform_hole_punch`` (counted).
"""
from __future__ import annotations

import os
import random
import time
from collections import Counter, OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL, CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader

from .libp2p import RELAYED, key_pair_from_seed
from .service import TrioService

MiB = 1 << 20
PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"
VERDICTS = 5  # the newest answers to our dial-back requests that decide reachability
SERVERS_PER_CHECK = 3  # peers asked in one check
DIALBACK_EVERY = 10.0  # seconds between two dial-backs we do for the same peer
DIALBACKS_AT_ONCE = 2


@dataclass(frozen=True)
class ReachConfig:
    relay: bool = False  # offer the relay (hop) service to others
    relay_reservations: int = 64  # peers that may hold a reservation on us at once
    relay_circuits: int = 4  # circuits open at once to one reserved peer
    relay_circuit_bytes: int = 64 * MiB  # bytes one circuit carries, both ways together
    relay_circuit_seconds: int = 600  # seconds one circuit stays open
    relay_bulk: int = 0  # bytes an hour of frames above small_frame we send over relayed connections
    max_relays: int = 2  # relays a private node reserves a slot on
    check_s: float = 30.0  # seconds between reachability checks once it is known
    dialback_timeout: float = 5.0

    def __post_init__(self) -> None:
        for option, value in (("--relay-reservations", self.relay_reservations),
                              ("--relay-circuits", self.relay_circuits),
                              ("--relay-circuit-bytes", self.relay_circuit_bytes),
                              ("--relay-circuit-seconds", self.relay_circuit_seconds)):
            if not value >= 1:
                raise ValueError(f"{option} must be at least 1, got {value}")
        if not self.relay_bulk >= 0:
            raise ValueError(f"--relay-bulk must be at least 0 bytes an hour, got {self.relay_bulk}")


class _DialBack(AutoNATService):
    """AutoNAT with a dial-back that proves something (py-libp2p's dials with ``host.connect``,
    which returns the asker's own connection): a Noise handshake with the asker's key, on a TCP
    connection of its own from a throwaway key; rate-limited per peer."""

    def __init__(self, host, timeout: float) -> None:
        super().__init__(host, serve=True, confirmations=1)
        self.timeout = timeout
        self.served: OrderedDict[str, float] = OrderedDict()  # peer id -> when we last dialed it back
        self.busy = trio.Semaphore(DIALBACKS_AT_ONCE)
        self.counts: Counter = Counter()

    async def handle_stream(self, stream) -> None:
        peer, now = stream.muxed_conn.peer_id.to_base58(), time.monotonic()
        if now - self.served.get(peer, -DIALBACK_EVERY) < DIALBACK_EVERY or self.busy.value == 0:
            self.counts["dialbacks_refused"] += 1
            await stream.reset()
            return
        self.served.pop(peer, None)
        self.served[peer] = now
        while len(self.served) > 1024:
            self.served.popitem(last=False)
        async with self.busy:
            await super().handle_stream(stream)

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        self.counts["dialbacks"] += 1
        for addr in addrs:
            with trio.move_on_after(self.timeout):
                if await _noise_handshake(multiaddr.Multiaddr(addr), peer_id):
                    return bytes(addr)
        return None


async def _noise_handshake(addr, peer_id: ID) -> bool:
    """Whether the peer answers a TCP dial at ``addr`` with a Noise handshake under its own key.
    A throwaway key, and no muxer after the handshake: the peer's swarm never counts a connection."""
    noise = NoiseTransport(key_pair_from_seed(os.urandom(32)), noise_privkey=create_x25519_key_pair().private_key)
    try:
        raw = await TCP().dial(addr)
    except Exception:  # noqa: BLE001 -- not reachable there
        return False
    try:
        secure = await TransportUpgrader({NOISE_PROTOCOL_ID: noise}, {}).upgrade_security(raw, True, peer_id)
        await secure.close()
        return True
    except Exception:  # noqa: BLE001 -- not Noise, or another peer's key
        return False
    finally:
        with trio.CancelScope(shield=True):
            await raw.close()


class _DCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR, counting its hole punches (as initiator and as responder)."""

    def __init__(self, host, counts: Counter) -> None:
        super().__init__(host)
        self.counts = counts

    async def _perform_hole_punch(self, peer_id, addrs, as_responder: bool = False) -> bool:
        punched = await super()._perform_hole_punch(peer_id, addrs, as_responder=as_responder)
        self.counts["punched" if punched else "punch_failed"] += 1
        return punched


class _Bucket:
    """Bytes an hour, with a burst of an hour's worth."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour, self.level, self.at = per_hour, float(per_hour), time.monotonic()

    def take(self, nbytes: int) -> bool:
        now = time.monotonic()
        self.level = min(self.per_hour, self.level + (now - self.at) * self.per_hour / 3600)
        self.at = now
        if nbytes > self.level:
            return False
        self.level -= nbytes
        return True


class Reach(TrioService):
    """Reachability, relaying, reservations and hole punching for a running ``Libp2pTransport``."""

    def __init__(self, transport, config: ReachConfig | None = None) -> None:
        super().__init__()
        self.transport = transport
        self.config = config or ReachConfig()
        self.reachability = UNKNOWN
        self.verdicts: OrderedDict[str, bool] = OrderedDict()  # server peer id -> it reached us
        self.counts: Counter = Counter()
        self.relays: dict[str, str] = {}  # relay peer id -> our circuit address through it
        self.bulk = _Bucket(self.config.relay_bulk)

    # --- lifecycle
    async def _open(self, stack: AsyncExitStack) -> None:
        host, c = self.transport.host, self.config
        limits = RelayLimits(duration=c.relay_circuit_seconds, data=c.relay_circuit_bytes,
                             max_circuit_conns=c.relay_circuits, max_reservations=c.relay_reservations)
        self.circuit = CircuitV2Protocol(host, limits=limits, allow_hop=c.relay)
        await stack.enter_async_context(background_trio_service(self.circuit))
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if c.relay else RelayRole(0))
        self.circuits = CircuitV2Transport(host, self.circuit, RelayConfig(roles=roles, limits=limits))
        self.dcutr = _DCUtR(host, self.counts)
        await stack.enter_async_context(background_trio_service(self.dcutr))
        self.autonat = _DialBack(host, c.dialback_timeout)
        self.transport.circuit_dialer = self.circuits.dial
        self.transport.admit_relayed_bulk = self._admit_bulk
        stack.callback(self._detach)

    def _detach(self) -> None:
        self.transport.circuit_dialer = None
        self.transport.relayed_addrs = []

    def _start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._loop)

    async def _loop(self) -> None:
        delay = 1.0
        while True:
            await trio.sleep(delay)
            await self.check()
            await self.keep_reservations()
            delay = 3.0 if self.reachability == UNKNOWN else self.config.check_s

    # --- reachability
    def _direct_peers(self, protocol: str) -> list[ID]:
        """Connected peers, directly (not through a relay), that said (identify) they speak ``protocol``."""
        host, found = self.transport.host, []
        for pid in host.get_connected_peers():
            try:
                speaks = protocol in host.get_peerstore().get_protocols(pid)
            except Exception:  # noqa: BLE001 -- not identified yet
                speaks = False
            if speaks and self.transport.path(pid.to_base58()) not in (None, RELAYED):
                found.append(pid)
        return found

    async def check(self) -> str:
        """Ask a few connected peers to dial us back; the newest answers decide."""
        servers = self._direct_peers(AUTONAT_PROTOCOL_ID)
        random.shuffle(servers)
        addrs = await self.autonat_addrs()
        if not addrs:  # nowhere to be dialed at: nobody can
            self.reachability = PRIVATE
            return self.reachability
        async with trio.open_nursery() as nursery:
            for server in servers[:SERVERS_PER_CHECK]:
                nursery.start_soon(self._ask, server, addrs)
        answers = list(self.verdicts.values())
        if answers:
            self.reachability = PUBLIC if 2 * sum(answers) > len(answers) else PRIVATE
        return self.reachability

    async def autonat_addrs(self) -> list[bytes]:
        """Where we may be dialed: our IP as peers see it with our listen port, else our listen
        addresses (py-libp2p's DCUtR works these out for its hole punches: one rule for both)."""
        return await self.dcutr._get_observed_addrs()

    async def _ask(self, server: ID, addrs: list[bytes]) -> None:
        try:
            status, _ = await self.autonat.query_server(server, addrs, timeout=self.config.dialback_timeout + 5)
        except Exception:  # noqa: BLE001 -- no answer: no verdict
            self.counts["checks_unanswered"] += 1
            return
        if status in (AutoNATMessage.OK, AutoNATMessage.E_DIAL_ERROR):
            peer = server.to_base58()
            self.verdicts.pop(peer, None)
            self.verdicts[peer] = status == AutoNATMessage.OK
            while len(self.verdicts) > VERDICTS:
                self.verdicts.popitem(last=False)

    # --- reservations
    async def keep_reservations(self) -> None:
        """While private: a reservation on up to ``max_relays`` relays, renewed before it lapses;
        our circuit addresses follow them."""
        now = time.time()
        held = self.circuits._reservations  # relay ID -> expiry (s), as py-libp2p keeps them
        connected = {pid.to_base58() for pid in self.transport.host.get_connected_peers()}
        for relay in [r for r in self.relays if r not in connected]:
            del self.relays[relay]
        if self.reachability == PRIVATE:
            for pid in self._direct_peers(HOP_PROTOCOL):
                if pid.to_base58() in self.relays:
                    renew = held.get(pid, 0) - now < 2 * self.config.check_s  # before it lapses
                else:
                    renew = len(self.relays) < self.config.max_relays
                if renew:
                    await self.reserve(pid)
        else:
            self.relays.clear()
        self.transport.relayed_addrs = sorted(self.relays.values())

    async def reserve(self, relay: ID) -> bool:
        """A reservation on ``relay`` (connected); our address through it goes into ``relays``."""
        try:
            with trio.fail_after(self.config.dialback_timeout + 5):
                stream = await self.transport.host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    reserved = await self.circuits._make_reservation(stream, relay)
                finally:
                    await stream.close()
        except Exception:  # noqa: BLE001 -- the relay went away or refused
            reserved = False
        self.counts["reservations" if reserved else "reservations_failed"] += 1
        if not reserved:
            return False
        conns = self.transport.host.get_network().get_connections(relay)
        addrs = [str(a) for c in conns for a in c.get_transport_addresses() if "/p2p-circuit" not in str(a)]
        if addrs:
            relay_id = relay.to_base58()
            self.relays[relay_id] = f"{addrs[0]}/p2p/{relay_id}/p2p-circuit/p2p/{self.transport.address}"
        return True

    def _admit_bulk(self, peer: str, nbytes: int) -> bool:
        return self.bulk.take(nbytes)

    def status(self) -> dict:
        """For ``node status``: reachability, our relays, what we relay, what was punched."""
        served = self.circuit.resource_manager
        return {"reachability": self.reachability, "relayed_addrs": list(self.transport.relayed_addrs),
                "relay_service": self.config.relay,
                "reserved_here": len(served._reservations) if self.config.relay else 0,
                "circuits_here": len(self.circuit._active_relays) if self.config.relay else 0,
                "relay_bulk_per_hour": self.config.relay_bulk,
                **{k: v for k, v in sorted((self.counts + self.autonat.counts).items())}}
