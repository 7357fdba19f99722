"""What the CLI shows of a running node, built from its control socket's answers ("status",
"peers"): the status lines of `node status`, the peers table of `peers`, and the live view of
`node status --watch` (rich), redrawn every few seconds until Ctrl-C or until the node stops."""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from manymodels.node.runtime.logs import size

from .errors import UserError


def status_lines(s: dict) -> list[str]:
    """Who the node is, where it listens, and how far it got."""
    accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
    loading = "; loading its learner" if s["state"] == "loading" else ""
    codecs = f", compress {s['compress']}" if s["exchange"] in ("weights", "mixed") else ""
    codecs += f", compress-logits {s['compress_logits']}" if s["exchange"] in ("distill", "mixed") else ""
    return [f"node {s['id']}  ({s['model']}, {s['exchange']}, rule {s['rule']}{codecs}){loading}",
            f"listening on {' '.join(s['addrs'])}",
            f"{s['peers']} peers connected; model version {s['version']}, held-out accuracy {accuracy}; "
            f"{s['messages_accepted']} messages accepted ({s['pulled']} pulled by digest), "
            f"{sum(s['rejected'].values())} rejected; up {s['uptime_s']:.0f} s", *_privacy_line(s.get("privacy")),
            *_reach_line(s.get("reach"))]


def _reach_line(r: dict | None) -> list[str]:
    """Whether peers can dial the node, the relays it is reached through, what it relays itself."""
    if r is None:
        return []
    through = f"; reached through {len(r['relayed_addrs'])} relays" if r["relayed_addrs"] else ""
    serving = (f"; relaying for {r['reserved_here']} peers ({r['circuits_here']} circuits)"
               if r["relay_service"] else "")
    tried = r.get("punched", 0) + r.get("punch_failed", 0)
    punched = f"; {r.get('punched', 0)} of {tried} hole punches direct" if tried else ""
    return [f"reachability {r['reachability']}{through}{serving}{punched}"]


def _privacy_line(p: dict | None) -> list[str]:
    """What DP has spent, when the node runs it (DP-SGD, or the synthetic exchange's noisy moments)."""
    if p is None:
        return []
    spent = "-" if p["epsilon"] is None else f"{p['epsilon']:.3g}"
    budget = f" of a budget of {p['budget']:g}" if p["budget"] else ""
    stopped = "" if p["publishing"] else "; budget spent, publishing stopped"
    mechanism = "noisy class moments" if p.get("mechanism") == "moments" else "DP-SGD"
    return [f"{mechanism}: epsilon {spent}{budget} at delta {p['delta']:g}{stopped}"]


def status_view(s: dict, peers: list[dict] | None = None) -> RenderableType:
    """The live view: the status lines, the counters by reason and the gate, the peers table."""
    counters = Table.grid(padding=(0, 2))
    counters.add_column(style="bold")
    counters.add_column()
    gate = s["gate"]
    counters.add_row("bytes", f"sent {size(s['bytes_sent'])}, received {size(s['bytes_received'])}")
    counters.add_row("rejected", _by_reason(s["rejected"]))
    counters.add_row("refused", _by_reason(s["refused"]))
    counters.add_row("frames refused", _by_reason({why: n for why, n in s["frames_refused"].items() if n}))
    counters.add_row("gate", ", ".join([f"{gate['blocked_now']} peers blocked now",
                                        f"{gate['inbound_dropped']} frames dropped",
                                        *(f"{event} {n}" for event, n in sorted(gate.items())
                                          if event not in ("blocked_now", "inbound_dropped"))]))
    parts = [Text(line) for line in status_lines(s)] + [Text(), counters]
    if peers:
        parts += [Text(), peers_table(peers)]
    return Group(*parts)


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "none"


def peers_table(rows: list[dict]) -> Table:
    """Peers the node knows: connected, last seen, what they offered, messages accepted and rejected."""
    table = Table(title="peers")
    for column in ("peer", "connected", "last seen", "offered", "accepted", "rejected", "reputation"):
        table.add_column(column)
    for p in rows:
        offered = ", ".join(f"{k} {v}".strip() for k, v in p["offered"].items())
        reputation = "banned" if p["banned"] else ("-" if p["reputation"] is None else f"{p['reputation']:.2f}")
        table.add_row(p["id"], p.get("path") or ("yes" if p["connected"] else "no"), _ago(p["last_seen"]), offered,
                      str(p["accepted"]), str(p["rejected"]), reputation)
    return table


def _ago(ms: int) -> str:
    return "never" if not ms else f"{max(0, time.time() - ms / 1000):.0f} s ago"


def watch(view: Callable[[], RenderableType], interval: float, console: Console) -> None:
    """Show `view()` and redraw it every `interval` seconds, until Ctrl-C, or until it raises a
    UserError (the node stopped: said in one line). A node not running at the start raises as is."""
    def framed() -> RenderableType:
        return Group(view(), Text(f"\n{time.strftime('%H:%M:%S')}, every {interval:g} s; Ctrl-C to stop",
                                  style="dim"))
    try:
        with Live(framed(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                try:
                    live.update(framed(), refresh=True)
                except UserError as exc:
                    gone = str(exc)
                    break
    except KeyboardInterrupt:
        return
    finally:
        if not console.is_terminal:  # a file gets the last frame only, which Live leaves without its newline
            console.line()
    console.print(f"the node stopped: {gone}", highlight=False)
