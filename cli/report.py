"""What a simulation report (run.json, from `simulate --report`) holds, for `manymodels report`: the config
against its defaults, per-round series, a CSV, a plot and one self-contained HTML page. Pure functions of
the report dict; matplotlib is imported only where the plot is drawn, so the CLI starts fast.

The network's mean per round counts honest nodes only, as the report's summary does."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from rich.table import Table

from manymodels.node.runtime.logs import size

from .errors import UserError

# what the tables read; the rest (bytes per round, rejections by reason, bans) is shown when present
_NODE_KEYS = ("id", "model", "num_examples", "final_accuracy", "local_only_accuracy", "bytes_sent",
              "bytes_received", "rejected_messages", "history")
_SUMMARY_KEYS = ("mean_accuracy", "min_accuracy", "mean_local_only_accuracy", "pooled_accuracy")


def load(path: Path) -> dict:
    """The report in `path`, or a UserError saying in one line why it is not one."""
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None
    problem = _not_a_report(report)
    if problem:
        raise UserError(f"{path} is not a report written by `manymodels simulate --report`: {problem}")
    return report


def _not_a_report(report) -> str | None:
    """Why `report` cannot be shown, or None: the keys every view reads, with their shapes."""
    if not isinstance(report, dict):
        return "not a JSON object"
    missing = [k for k in ("config", "summary", "nodes") if k not in report]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(report["nodes"], list) or not report["nodes"]:
        return "no nodes"
    if not isinstance(report["config"], dict) or not isinstance(report["summary"], dict):
        return "its config or summary is not an object"
    if any(k not in report["summary"] for k in _SUMMARY_KEYS):
        return "its summary has no accuracies"
    for i, node in enumerate(report["nodes"]):
        if not isinstance(node, dict) or any(k not in node for k in _NODE_KEYS):
            return f"node {i} lacks one of {', '.join(_NODE_KEYS)}"
        if not isinstance(node["history"], list) or not node["history"] \
                or len(node["history"]) != len(report["nodes"][0]["history"]):
            return f"node {i}'s accuracy history is empty or of another length"
    return None


def changed_config(config: dict, defaults: dict) -> dict:
    """The options that differ from their defaults (those a report lists only when set count too)."""
    defaults = json.loads(json.dumps(defaults))  # tuples as lists, as the report holds them
    return {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}


def rounds(report: dict) -> list[dict]:
    """One entry per round: the honest nodes' mean, min and max accuracy, the messages they rejected in
    the round (by reason) and the peers they had banned by its end; the bytes all nodes sent, by kind."""
    nodes = report["nodes"]
    honest = [n for n in nodes if not n.get("attack")] or nodes
    series = []
    for r in range(len(nodes[0]["history"])):
        accuracies = [n["history"][r] for n in honest]
        series.append({"round": r + 1, "mean_accuracy": round(sum(accuracies) / len(accuracies), 6),
                       "min_accuracy": min(accuracies), "max_accuracy": max(accuracies),
                       "bytes_sent_by_kind": _summed(_in_round(n, "bytes_sent_per_round", r, {}) for n in nodes),
                       "rejected_by_reason": _summed(_in_round(n, "rejected_per_round", r, {}) for n in honest),
                       "banned": sum(_in_round(n, "banned_per_round", r, 0) for n in honest)})
    return series


def _in_round(node: dict, key: str, r: int, missing):
    """A node's `key` series at round r (a report from before the series existed has none)."""
    per_round = node.get(key) or []
    return per_round[r] if r < len(per_round) else missing


def _summed(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def node_rows(report: dict) -> list[dict]:
    """One entry per node: what the per-node tables show, plus its accuracy per round."""
    return [{
        "index": i, "id": n["id"], "model": n["model"], "attack": n.get("attack"),
        "num_examples": n["num_examples"], "final_accuracy": n["final_accuracy"],
        "local_only_accuracy": n["local_only_accuracy"], "pooled_accuracy": n.get("pooled_accuracy"),
        "bytes_sent": n["bytes_sent"], "bytes_received": n["bytes_received"],
        "messages_accepted": n.get("messages_accepted"), "rejected_messages": n["rejected_messages"],
        "rejected_by_reason": n.get("rejected_by_reason", {}), "banned": len(n.get("banned", [])),
        "accuracy": n["history"],
    } for i, n in enumerate(report["nodes"])]


def to_json(report: dict, defaults: dict) -> dict:
    """`report --json`: the config (and what differs from the defaults), the summary, the per-round
    series and the per-node rows. Its keys are stable."""
    return {"config": report["config"], "changed_config": changed_config(report["config"], defaults),
            "summary": report["summary"], "attackers": report.get("attackers", []),
            "rounds": rounds(report), "nodes": node_rows(report)}


def to_csv(report: dict) -> str:
    """One row per (round, node): its accuracy, the bytes it sent that round (in all and by kind), the
    messages it rejected that round and the peers it had banned by its end."""
    kinds = sorted({k for n in report["nodes"] for per in n.get("bytes_sent_per_round") or [] for k in per})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["round", "node", "id", "model", "attack", "accuracy", "bytes_sent",
                     *(f"bytes_sent_{k}" for k in kinds), "rejected", "banned"])
    for r in range(len(report["nodes"][0]["history"])):
        for i, n in enumerate(report["nodes"]):
            sent = _in_round(n, "bytes_sent_per_round", r, {})
            writer.writerow([r + 1, i, n["id"], n["model"], n.get("attack") or "", n["history"][r],
                             sum(sent.values()), *(sent.get(k, 0) for k in kinds),
                             sum(_in_round(n, "rejected_per_round", r, {}).values()),
                             _in_round(n, "banned_per_round", r, 0)])
    return out.getvalue()


def plot_png(report: dict) -> bytes:
    """Accuracy per round of every node (thin), the honest mean (thick), local-only and pooled as
    reference lines; below, the bytes all nodes sent per round, by kind, when the report has them, and
    the honest nodes' rejections and bans per round when there were any."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot and --html draw with matplotlib: pip install 'manymodels[report]'") from None
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series, summary = rounds(report), report["summary"]
    x = [s["round"] for s in series]
    panels = [draw for draw, shown in ((_plot_bytes, any(s["bytes_sent_by_kind"] for s in series)),
                                       (_plot_rejections, any(s["rejected_by_reason"] or s["banned"] for s in series)))
              if shown]
    fig = Figure(figsize=(10, 5 + 3 * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(1 + len(panels), 1, sharex=True, squeeze=False)[:, 0]
    acc = axes[0]
    honest_colours = [f"C{k}" for k in range(10) if k != 3]  # C3 is the default cycle's red
    labelled = set()
    for i, n in enumerate(report["nodes"]):
        role = "attackers" if n.get("attack") else "nodes"  # attackers red and dashed; honest nodes never red
        acc.plot(x, n["history"], linewidth=1, alpha=0.7, linestyle="--" if n.get("attack") else "-",
                 color="tab:red" if n.get("attack") else honest_colours[i % len(honest_colours)],
                 label=None if role in labelled else role)
        labelled.add(role)
    acc.plot(x, [s["mean_accuracy"] for s in series], color="black", linewidth=3, label="network mean")
    acc.axhline(summary["mean_local_only_accuracy"], color="grey", linestyle=":", linewidth=2,
                label=f"local only {summary['mean_local_only_accuracy']:.3f}")
    acc.axhline(summary["pooled_accuracy"], color="tab:green", linestyle="-.", linewidth=2,
                label=f"pooled {summary['pooled_accuracy']:.3f}")
    acc.set(ylabel="held-out accuracy", title="accuracy per round")
    acc.grid(alpha=0.3)
    acc.legend(fontsize="small", loc="lower right")
    for ax, draw in zip(axes[1:], panels):
        draw(ax, x, series)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _plot_bytes(ax, x: list[int], series: list[dict]) -> None:
    """Stacked bars: the bytes every node sent per round, one colour per message kind."""
    bottom = [0.0] * len(x)
    for kind in sorted({k for s in series for k in s["bytes_sent_by_kind"]}):
        mb = [s["bytes_sent_by_kind"].get(kind, 0) / 1e6 for s in series]
        ax.bar(x, mb, bottom=bottom, label=kind)
        bottom = [b + m for b, m in zip(bottom, mb)]
    ax.set(ylabel="MB sent (all nodes)", title="bytes sent per round, by kind")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")


def _plot_rejections(ax, x: list[int], series: list[dict]) -> None:
    """Stacked bars: the messages honest nodes rejected per round, one colour per reason; a line: the
    peers they had banned by the end of each round (their sum: one attacker banned by 3 nodes is 3)."""
    bottom = [0] * len(x)
    for reason in sorted({k for s in series for k in s["rejected_by_reason"]}):
        counts = [s["rejected_by_reason"].get(reason, 0) for s in series]
        ax.bar(x, counts, bottom=bottom, label=f"rejected: {reason}")
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.plot(x, [s["banned"] for s in series], color="black", marker="o", label="bans (sum over nodes)")
    ax.set(ylabel="messages / bans", title="rejections per round, by reason, and bans")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")


def config_table(report: dict, defaults: dict) -> Table:
    """The options that differ from their defaults (the full config is in --json and --html)."""
    changed = changed_config(report["config"], defaults)
    table = Table(title=f"config: {len(changed)} of {len(report['config'])} options changed")
    table.add_column("option")
    table.add_column("value")
    for k, v in changed.items():
        table.add_row(k, _value(v))
    return table


def rounds_table(report: dict, most: int = 20) -> Table:
    """The network per round, at most `most` rows (every k-th round and the last), with the references."""
    series, s = rounds(report), report["summary"]
    step = -(-len(series) // most)
    shown = series[::step] if series[::step][-1] is series[-1] else [*series[::step], series[-1]]
    table = Table(title="rounds (honest nodes)", caption=f"alone {s['mean_local_only_accuracy']:.3f} | "
                                                        f"one pooled model {s['pooled_accuracy']:.3f}")
    for column in ("round", "mean", "min", "max", "sent", "rejected", "banned"):
        table.add_column(column, justify="right")
    for r in shown:
        table.add_row(str(r["round"]), f"{r['mean_accuracy']:.3f}", f"{r['min_accuracy']:.3f}",
                      f"{r['max_accuracy']:.3f}", size(sum(r["bytes_sent_by_kind"].values())),
                      str(sum(r["rejected_by_reason"].values())), str(r["banned"]))
    return table


def write(path: Path, data: str | bytes) -> None:
    """Write an output file, or a UserError saying in one line why it cannot be."""
    try:
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}
td,th{border:1px solid #ccc;padding:.25em .4em;text-align:right;white-space:nowrap}.wide{overflow-x:auto}
th{background:#f0f0f0}td.l,th.l{text-align:left}tr.attack td{color:#b00}.changed{font-weight:bold}
img{max-width:100%;border:1px solid #ddd}code{font-size:80%}"""


def to_html(report: dict, png: bytes, defaults: dict) -> str:
    """One self-contained page: the summary, the config (changed options bold), the plot as a data URI
    and the node table. Nothing in it points outside the file."""
    s, changed = report["summary"], changed_config(report["config"], defaults)
    config_rows = "".join(
        f'<tr{" class=changed" if k in changed else ""}><td class=l>{_e(k)}</td><td class=l>{_e(_value(v))}</td></tr>'
        for k, v in report["config"].items())
    image = base64.b64encode(png).decode()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>manymodels report</title><style>{_CSS}</style></head>
<body><h1>manymodels report</h1>
<p>held-out accuracy (honest nodes): many models <b>{s['mean_accuracy']:.3f}</b> (min {s['min_accuracy']:.3f})
&middot; alone {s['mean_local_only_accuracy']:.3f} &middot; one pooled model {s['pooled_accuracy']:.3f}
&middot; {len(report['nodes'])} nodes, {len(report['nodes'][0]['history'])} rounds,
{len(report.get('attackers', []))} attackers</p>
<h2>accuracy and traffic</h2>
<img alt="accuracy per round and bytes per round" src="data:image/png;base64,{image}">
<h2>nodes</h2>
<div class=wide>{_node_table(report)}</div>
<h2>config</h2><p>options that differ from the defaults are bold</p>
<table><tr><th class=l>option</th><th class=l>value</th></tr>{config_rows}</table>
</body></html>
"""


def _node_table(report: dict) -> str:
    head = ("node", "id", "model", "attack", "data", "accuracy", "alone", "pooled", "sent", "recv", "accepted",
            "rejected", "banned")  # the terminal table's names, short: the table fits a 1200 px window
    rows = []
    for n in node_rows(report):
        reasons = ", ".join(f"{k} {v}" for k, v in n["rejected_by_reason"].items())
        cells = (n["index"], f"<code>{_e(n['id'])}</code>", _e(n["model"]), _e(n["attack"] or ""),
                 n["num_examples"], f"{n['final_accuracy']:.3f}", f"{n['local_only_accuracy']:.3f}",
                 _accuracy(n["pooled_accuracy"]), size(n["bytes_sent"]), size(n["bytes_received"]),
                 _value(n["messages_accepted"]),
                 _e(f"{n['rejected_messages']}" + (f" ({reasons})" if reasons else "")), n["banned"])
        row_class = " class=attack" if n["attack"] else ""
        rows.append(f"<tr{row_class}>" + "".join(
            f"<td{' class=l' if j in (1, 2, 3) else ''}>{c}</td>" for j, c in enumerate(cells)) + "</tr>")
    header = "".join(f"<th{' class=l' if j in (1, 2, 3) else ''}>{h}</th>" for j, h in enumerate(head))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _e(text) -> str:
    return html.escape(str(text))


def _value(v) -> str:
    return "" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _accuracy(v) -> str:
    return "" if v is None else f"{v:.3f}"
