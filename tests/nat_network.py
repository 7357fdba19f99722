"""A small internet with two home routers, built in network namespaces (root, iproute2, iptables).

    with NatNetwork("mm123") as net:          # raises NatUnavailable(reason) where it cannot be built
        net.run("relay", ["manymodels", ...])  # a process in the public host's namespace
        net.prefix("home_a")                   # ("ip", "netns", "exec", "mm123-home_a")

The public segment 198.51.100.0/24 (TEST-NET-2, so that libp2p takes it for a public network) is a
bridge in ``relay``'s namespace: the relay at .1, the routers' WAN sides at .2 and .3. Behind each
router is one home host (192.168.1.2 behind ``router_a``, 192.168.2.2 behind ``router_b``). A
router does what a home router does: source NAT (MASQUERADE) for its home network, forwarding of
replies only (conntrack), and it silently drops unsolicited packets from the WAN (no RST, so a
simultaneous TCP open can meet in the middle). Linux MASQUERADE keeps a connection's source port
when it is free, so a home host's listen port is its port on the router's address too: the one
NAT property TCP hole punching needs. Nobody on the public side has a route to a home network.
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PUBLIC = "198.51.100"
RELAY_IP = f"{PUBLIC}.1"
ROUTERS = {"a": (f"{PUBLIC}.2", "192.168.1"), "b": (f"{PUBLIC}.3", "192.168.2")}


# The daemons of the NAT tests and bench/bench_nat.py: the relay is partition 0, home_a 1, home_b 2.
RECIPE = ["--dataset", "digits", "--partition", "dirichlet:0.1", "--num-partitions", "3", "--model", "logreg",
          "--period", "0.5"]


def daemon_homes(root: Path) -> dict[str, Path]:
    return {name: root / name for name in ("relay", "home_a", "home_b")}


def start_daemons(net: NatNetwork, homes: dict[str, Path], port: int) -> None:
    """The relay daemon (with --relay) on the public segment, then a daemon behind each router joined
    through it, side by side (`homes`: daemon_homes'). The caller stops them, also after a failure."""
    from test_daemon import start, status

    start(homes["relay"], *RECIPE, "--partition-id", "0", "--listen", f"/ip4/{RELAY_IP}/tcp/{port}", "--relay",
          prefix=net.prefix("relay"))
    relay = status(homes["relay"])["addrs"][0]

    def start_home(i: int, side: str) -> None:
        start(homes[f"home_{side}"], *RECIPE, "--partition-id", str(i), "--bootstrap", relay,
              "--listen", f"/ip4/{net.home_ip(side)}/tcp/{port}", prefix=net.prefix(f"home_{side}"))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(start_home, (1, 2), "ab"))


class NatUnavailable(Exception):
    """The namespaces or the NAT cannot be created here; the message says why."""


class NatNetwork:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def prefix(self, host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns(host))

    def home_ip(self, side: str) -> str:
        return f"{ROUTERS[side][1]}.2"

    def router_ip(self, side: str) -> str:
        return ROUTERS[side][0]

    def __enter__(self) -> NatNetwork:
        for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
            if shutil.which(tool) is None:
                raise NatUnavailable(f"`{tool}` is not installed (apt-get install {package}; `make deps`)")
        try:
            self._public()
            for side in ROUTERS:
                self._home(side)
        except NatUnavailable:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.made.clear()

    def _add_ns(self, host: str) -> None:
        done = subprocess.run(["ip", "netns", "add", self.ns(host)], capture_output=True, text=True)
        if done.returncode != 0:
            raise NatUnavailable(f"cannot create network namespaces here: {done.stderr.strip()}")
        self.made.append(self.ns(host))
        self._in(host, "ip", "link", "set", "lo", "up")

    def _in(self, host: str, *command: str) -> None:
        self._step(*self.prefix(host), *command)

    def _step(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise NatUnavailable(f"cannot build the NAT network: {' '.join(command)}: {done.stderr.strip()}")

    def _link(self, a: str, a_dev: str, b: str, b_dev: str) -> None:
        """A veth pair between two namespaces (names made unique while they are created)."""
        tmp_a, tmp_b = f"{self.tag}{a_dev}"[-15:], f"{self.tag}{b_dev}"[-15:]
        self._step("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, host, dev in ((tmp_a, a, a_dev), (tmp_b, b, b_dev)):
            self._step("ip", "link", "set", tmp, "netns", self.ns(host))
            self._in(host, "ip", "link", "set", tmp, "name", dev)

    def _public(self) -> None:
        self._add_ns("relay")
        self._in("relay", "ip", "link", "add", "br0", "type", "bridge")
        self._in("relay", "ip", "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
        self._in("relay", "ip", "link", "set", "br0", "up")

    def _home(self, side: str) -> None:
        wan_ip, lan = ROUTERS[side]
        router, home = f"router_{side}", f"home_{side}"
        self._add_ns(router)
        self._add_ns(home)
        self._link("relay", f"p{side}", router, "wan")
        self._in("relay", "ip", "link", "set", f"p{side}", "master", "br0")
        self._in("relay", "ip", "link", "set", f"p{side}", "up")
        self._link(router, "lan", home, "eth0")
        for host, dev, ip in ((router, "wan", f"{wan_ip}/24"), (router, "lan", f"{lan}.1/24"),
                              (home, "eth0", f"{lan}.2/24")):
            self._in(host, "ip", "addr", "add", ip, "dev", dev)
            self._in(host, "ip", "link", "set", dev, "up")
        self._in(home, "ip", "route", "add", "default", "via", f"{lan}.1")
        self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = [
            ("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"),
            ("-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            ("-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"),
            ("-P", "FORWARD", "DROP"),
            ("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            ("-A", "INPUT", "-i", "wan", "-j", "DROP"),
        ]
        for rule in rules:
            self._in(router, "iptables", *rule)
