"""Where a daemon listens: the configured multiaddrs, an ephemeral TCP or QUIC (UDP) port (0) kept
from the last run, and a port that another process listens on refused before the host starts.

A restarted node must come back at the address its peers and their bootstrap lists hold, or the
network cannot find it again (under churn it splinters: every restart a new port). py-libp2p opens
its TCP listeners with SO_REUSEPORT (for hole punching), so a second process binding a port that is
taken succeeds and the kernel splits the connections between the two: hence the probe, which binds
without SO_REUSEPORT and so fails exactly when someone listens there (TIME_WAIT leftovers of a
killed daemon do not count: SO_REUSEADDR).

The daemon's Prometheus endpoint (`--metrics HOST:PORT`) is checked the same way: a host of this
machine (loopback when none is given), a port nobody listens on."""
from __future__ import annotations

import errno
import ipaddress
import socket

_FAMILIES = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6}
_KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


class ListenError(ValueError):
    """A configured listen address cannot be used."""


def socket_parts(addr: str) -> tuple[str, str, int, str] | None:
    """("ip4"|"ip6", host, port, "tcp"|"udp") of a /ipX/<host>/(tcp|udp)/<port>[/...] multiaddr, else None."""
    parts = addr.split("/")
    if len(parts) < 5 or parts[0] or parts[1] not in _FAMILIES or parts[3] not in _KINDS or not parts[4].isdigit():
        return None
    return parts[1], parts[2], int(parts[4]), parts[3]


def port_in_use(proto: str, host: str, port: int, kind: str = "tcp") -> bool:
    """Does a socket already listen on host:port (a TCP port, or a UDP one)?"""
    with socket.socket(_FAMILIES[proto], _KINDS[kind]) as sock:
        if kind == "tcp":  # a killed daemon's TIME_WAIT leftovers do not count (UDP has none)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise ListenError(f"cannot listen on {host} port {port}: {exc.strerror.lower()}") from None
    return False


def check_listen(addr: str) -> None:
    """A `--listen` address this machine can have: a multiaddr and, for TCP and QUIC, one of this
    machine's IPs (over UDP, QUIC v1 only). Checked before it is saved; whether its port is free is
    checked at each start."""
    import multiaddr  # py-libp2p's; light, unlike libp2p itself

    try:
        multiaddr.Multiaddr(addr)
    except ValueError as exc:
        raise ListenError(f"--listen {addr!r} is not a multiaddr ({getattr(exc, 'message', exc)})") from None
    parts = socket_parts(addr)
    if parts is not None and parts[3] == "udp" and addr.split("/")[5:6] != ["quic-v1"]:
        raise ListenError(f"--listen {addr!r}: over UDP a node listens for QUIC v1 only (/ip4/HOST/udp/PORT/quic-v1)")
    if parts is not None:
        port_in_use(parts[0], parts[1], 0, parts[3])  # raises if the host is not this machine's


def metrics_address(value: str) -> tuple[str, str, int]:
    """("ip4"|"ip6", host, port) of a `--metrics` address: HOST:PORT ([HOST]:PORT for IPv6), or
    :PORT or PORT for loopback."""
    host, _, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"--metrics {value!r} is not HOST:PORT with an IP address and a port "
                          "(e.g. 127.0.0.1:9464, or :9464 on loopback)")
    return ("ip4" if ip.version == 4 else "ip6"), str(ip), int(port)


def check_metrics(value: str) -> None:
    """A `--metrics` address this machine can serve on now: checked before it is saved, and at
    each start (its port is taken while the node runs)."""
    proto, host, port = metrics_address(value)
    try:
        taken = port_in_use(proto, host, port)
    except ListenError as exc:  # not this machine's address
        raise ListenError(f"--metrics {value}: {exc}") from None
    if taken:
        raise ListenError(f"--metrics {value}: {host} port {port} is in use by another process")


def listen_addrs(configured: list[str], bound_before: list[str]) -> list[str]:
    """The addresses to listen on. An explicit port that is taken is an error; port 0 becomes the
    port this node had last time (`bound_before`: its listen addresses then), when that is free."""
    out = []
    for addr in configured:
        parts = socket_parts(addr)
        if parts is None:
            out.append(addr)
            continue
        proto, host, port, kind = parts
        if port_in_use(proto, host, port, kind):  # port 0 never is; an address not on this machine raises
            raise ListenError(f"{host} port {port} is in use by another process (listen {addr})")
        if port:
            out.append(addr)
            continue
        before = [p[2] for p in map(socket_parts, bound_before) if p and p[:2] == (proto, host) and p[3] == kind
                  and p[2]]
        again = next((p for p in before if not port_in_use(proto, host, p, kind)), None)
        out.append(addr if again is None else "/".join(addr.split("/")[:4] + [str(again)] + addr.split("/")[5:]))
    return out
