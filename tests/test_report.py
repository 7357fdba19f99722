"""`manymodels report`: the terminal view, --json, --csv, --plot and --html of a real run, driven through
the installed command; the pure functions on a golden report with attackers; bad input is one line."""
import base64
import csv
import io
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from manymodels.cli import report as view
from manymodels.node.sim.simulator import SimulationConfig, run_simulation

GOLDEN = Path(__file__).parent / "golden"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real run (3 nodes, 3 rounds, non-iid): its report dict and the run.json it was written to."""
    report = run_simulation(SimulationConfig(nodes=3, rounds=3, partition="dirichlet:0.5", seed=2))
    path = tmp_path_factory.mktemp("run") / "run.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report, path


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_terminal_view_shows_the_changed_config_the_nodes_and_the_rounds(cli, run):
    report, path = run
    out = cli("report", path)
    assert out.returncode == 0, out.stderr
    assert "config: 3 of" in out.stdout and "dirichlet" not in out.stdout  # the default partition is not listed
    assert all(n["id"][-6:] in out.stdout for n in report["nodes"])
    assert re.search(r"│\s+3 │\s+0\.\d{3} │", out.stdout), out.stdout  # round 3's row
    assert "pooled model" in out.stdout


@pytest.mark.slow
def test_json_has_stable_keys_and_the_round_mean_is_the_nodes_mean(cli, run):
    report, path = run
    out = cli("report", path, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result) == ["config", "changed_config", "summary", "attackers", "rounds", "nodes"]
    assert result["changed_config"] == {"nodes": 3, "rounds": 3, "seed": 2}
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    for r, entry in enumerate(result["rounds"]):
        values = [n["history"][r] for n in report["nodes"]]
        assert entry["mean_accuracy"] == pytest.approx(sum(values) / 3, abs=1e-6)
        assert entry["min_accuracy"] == min(values) and entry["max_accuracy"] == max(values)
        assert entry["bytes_sent_by_kind"]["weights"] == sum(n["bytes_sent_per_round"][r]["weights"]
                                                             for n in report["nodes"])
    assert result["rounds"][-1]["mean_accuracy"] == pytest.approx(report["summary"]["mean_accuracy"], abs=1e-6)
    assert [n["accuracy"] for n in result["nodes"]] == [n["history"] for n in report["nodes"]]


@pytest.mark.slow
def test_csv_has_one_row_per_round_and_node(cli, run, tmp_path):
    report, path = run
    out = cli("report", path, "--csv", tmp_path / "run.csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "run.csv").read_text())))
    assert len(rows) == 3 * 3
    assert {"round", "node", "id", "accuracy", "bytes_sent", "bytes_sent_weights"} <= set(rows[0])
    for i, node in enumerate(report["nodes"]):
        mine = [row for row in rows if row["node"] == str(i)]
        assert [float(row["accuracy"]) for row in mine] == node["history"]
        assert sum(int(row["bytes_sent"]) for row in mine) == node["bytes_sent"]


@pytest.mark.slow
def test_plot_is_a_png_with_two_panels(cli, run, tmp_path):
    out = cli("report", run[1], "--plot", tmp_path / "run.png")
    assert out.returncode == 0, out.stderr
    data = (tmp_path / "run.png").read_bytes()
    assert len(data) > 10 * 1024
    assert _png_size(data) == (1000, 800)  # 10 x 8 inches at 100 dpi: accuracy above, bytes below


@pytest.mark.slow
def test_html_is_one_self_contained_page_with_the_plot_and_the_node_table(cli, run, tmp_path):
    report, path = run
    out = cli("report", path, "--html", tmp_path / "run.html")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.html"]
    page = (tmp_path / "run.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and _png_size(base64.b64decode(images[0])) == (1000, 800)
    assert "http://" not in page and "https://" not in page
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == [f"data:image/png;base64,{images[0]}"]
    for i, node in enumerate(report["nodes"]):
        assert re.search(rf"<tr><td>{i}</td><td class=l><code>{node['id']}</code></td>", page)
        assert f"<td>{node['final_accuracy']:.3f}</td><td>{node['local_only_accuracy']:.3f}</td>" in page


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed "
                    "(apt-get install chromium); the HTML is checked without rendering it")
def test_html_renders_in_headless_chromium(cli, run, tmp_path):
    from PIL import Image
    out = cli("report", run[1], "--html", tmp_path / "run.html")
    assert out.returncode == 0, out.stderr
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", (tmp_path / "run.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    pixels = image.load()
    # the plot: its pooled reference line is matplotlib's tab:green, drawn nowhere else on the page
    green = [y for y in range(1600) for x in range(0, 1200, 4) if _near(pixels[x, y], (44, 160, 44))]
    assert len(green) > 100, "the plot is not on the page"  # a line at least 400 px long
    # the node table below it: its header row's grey (#f0f0f0) across a wide band
    header = [y for y in range(max(green), 1600)
              if sum(pixels[x, y] == (240, 240, 240) for x in range(0, 1200, 2)) > 250]
    assert header, "the node table's header is not on the page below the plot"


def _near(rgb: tuple[int, int, int], target: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(rgb, target))


@pytest.mark.parametrize("content, text", [
    (None, "cannot read report"),
    ("{not json", "is not JSON"),
    ('{"config": {}, "summary": {}}', "is not a report written by `manymodels simulate --report`: no nodes"),
])
def test_bad_reports_are_one_line(cli, tmp_path, content, text):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    out = cli("report", tmp_path / "run.json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert text in out.stderr and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr


def test_an_unwritable_output_is_one_line(cli, tmp_path):
    out = cli("report", GOLDEN / "weights.json", "--csv", tmp_path / "no" / "such" / "dir" / "run.csv")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "cannot write" in out.stderr and out.stderr.strip().count("\n") == 0


@pytest.mark.multiprocess
def test_the_cli_imports_matplotlib_only_to_draw():
    code = "import sys, manymodels.cli.main; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_round_mean_counts_honest_nodes_only():
    report = view.load(GOLDEN / "attack-median.json")
    honest = [n for n in report["nodes"] if not n["attack"]]
    assert len(honest) == 6
    for r, entry in enumerate(view.rounds(report)):
        assert entry["mean_accuracy"] == round(sum(n["history"][r] for n in honest) / 6, 6)
    assert view.rounds(report)[-1]["mean_accuracy"] == report["summary"]["mean_accuracy"]


def test_rejections_and_bans_per_round_are_the_honest_nodes_sums():
    report = view.load(GOLDEN / "attack-median.json")
    series = view.rounds(report)
    assert [s["banned"] for s in series] == [0, 0, 0, 4, 6]  # by the end of each round, over 6 honest nodes
    assert [s["rejected_by_reason"] for s in series] == [{}, {}, {}, {}, {"banned": 4}]
    assert sum(sum(s["rejected_by_reason"].values()) for s in series) == report["summary"]["rejected_messages"]
    rows = list(csv.DictReader(io.StringIO(view.to_csv(report))))
    assert sum(int(row["rejected"]) for row in rows) == 4
    assert [int(row["banned"]) for row in rows if row["round"] == "5"] == [1, 0, 1, 1, 1, 0, 0, 2]
    assert _png_size(view.plot_png(report)) == (1000, 1100)  # accuracy, bytes, and rejections with bans


def test_changed_config_lists_what_differs_from_the_defaults():
    report = view.load(GOLDEN / "attack-median.json")
    changed = view.changed_config(report["config"], SimulationConfig().to_report())
    assert changed == {"rounds": 5, "rule": "median", "topology": "random:4", "loss": 0.1,
                       "attacks": ["signflip:0.25"], "reputation": 0.5}
    assert view.changed_config({**report["config"], "hidden": [64, 32]}, {})["hidden"] == [64, 32]
