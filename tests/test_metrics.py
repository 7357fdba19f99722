"""The daemon's Prometheus endpoint (`node start --metrics HOST:PORT`, issue 11): scraped from a
running daemon of a two-node network, parsed by prometheus_client's own parser, its numbers those
the node keeps; an address that cannot serve (port in use, not this machine's, not HOST:PORT) is
refused with one line before the config is saved; `--metrics off` turns it off again."""
import json
import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from manymodels.cli.errors import UserError
from manymodels.cli.network import _metrics, update_config
from manymodels.node.runtime.daemon import DaemonConfig
from manymodels.node.runtime.listen import ListenError, check_metrics, metrics_address, port_in_use
from manymodels.node.runtime.metrics import Metrics
from manymodels.node.runtime.store import Home
from test_daemon import start, status, stop
from test_listen import free_port, taken  # noqa: F401 (taken: a fixture)
from waiting import wait_until

RECIPE = ["--dataset", "digits", "--partition", "iid", "--num-partitions", "2", "--model", "logreg", "--period", "1"]


def test_a_metrics_address_is_host_and_port_on_loopback_unless_a_host_is_given():
    assert metrics_address("9464") == metrics_address(":9464") == ("ip4", "127.0.0.1", 9464)
    assert metrics_address(" 127.0.0.5:80 ") == ("ip4", "127.0.0.5", 80)  # a host given is kept
    assert metrics_address("[::1]:9464") == metrics_address("::1:9464") == ("ip6", "::1", 9464)
    for bad in ("", ":", "localhost:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "1.2.3:9", ":x"):
        with pytest.raises(ListenError, match="is not HOST:PORT"):
            metrics_address(bad)


def test_a_metrics_address_must_be_free_and_this_machines(taken):
    check_metrics(f"127.0.0.1:{free_port()}")
    with pytest.raises(ListenError, match=f"^--metrics :{taken}: 127.0.0.1 port {taken} is in use"):
        check_metrics(f":{taken}")
    with pytest.raises(ListenError, match="^--metrics 192.0.2.1:9464: cannot listen on 192.0.2.1 port 9464"):
        check_metrics("192.0.2.1:9464")


def test_a_port_taken_after_the_check_is_one_line_when_the_daemon_serves(taken):
    async def serve() -> None:
        Metrics().serve(f"127.0.0.1:{taken}", daemon=None, node=None, transport=None)
    with pytest.raises(ListenError, match=f"cannot serve on 127.0.0.1 port {taken}: address already in use$"):
        trio.run(serve)


def test_metrics_off_is_saved_as_none(tmp_path):
    home = Home(tmp_path / "n")
    port = free_port()
    assert update_config(home, metrics=_metrics(f" :{port}")).metrics == f":{port}"
    assert update_config(home, metrics=None).metrics == f":{port}"  # not given: the saved value
    assert update_config(home, metrics=_metrics("off")).metrics == ""
    assert json.loads(home.config_file.read_text())["metrics"] == ""
    with pytest.raises(UserError, match="is not HOST:PORT"):
        update_config(home, metrics=_metrics("localhost"))
    assert json.loads(home.config_file.read_text())["metrics"] == ""


@pytest.mark.parametrize("address, said", [("127.0.0.1:{taken}", "127.0.0.1 port {taken} is in use"),
                                           ("192.0.2.1:9464", "cannot listen on 192.0.2.1 port 9464"),
                                           ("localhost:9464", "is not HOST:PORT")])
def test_node_start_refuses_a_metrics_address_it_cannot_serve_before_saving(cli, tmp_path, taken, address, said):
    address, said = address.format(taken=taken), said.format(taken=taken)
    out = cli("node", "start", "--home", tmp_path / "n", *RECIPE, "--metrics", address, "--detach", timeout=60)
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert not (tmp_path / "n" / "config.json").exists()


def test_a_metrics_port_in_use_leaves_a_saved_config_as_it_was(cli, tmp_path, taken):
    home = tmp_path / "n"  # a stopped node's home
    home.mkdir()
    config = json.dumps(DaemonConfig(period=3.0).to_json()).encode()
    (home / "config.json").write_bytes(config)
    out = cli("node", "start", "--home", home, "--period", "1", "--metrics", f":{taken}", timeout=60)
    assert out.returncode == 2 and f"port {taken} is in use" in out.stderr, out.stderr
    assert (home / "config.json").read_bytes() == config


def scrape(port: int) -> dict[str, list]:
    """/metrics parsed: sample name -> its samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    (match,) = [s.value for s in samples[name] if s.labels == labels]
    return match


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_running_daemon_serves_its_counters_to_prometheus(tmp_path):
    homes, port = [tmp_path / "a", tmp_path / "b"], free_port()
    try:
        start(homes[0], *RECIPE, "--partition-id", "0", "--metrics", f"127.0.0.1:{port}")
        start(homes[1], *RECIPE, "--partition-id", "1", "--bootstrap", status(homes[0])["addrs"][0])
        before = wait_until(lambda: status(homes[0]), "a fold with the other node's model", 90,
                            until=lambda s: s["accuracy"] is not None and s["messages_accepted"] > 0 and s["peers"])
        samples = scrape(port)
        after = status(homes[0])
        assert before["messages_accepted"] <= value(samples, "manymodels_messages_accepted_total") \
            <= after["messages_accepted"]
        assert before["version"] <= value(samples, "manymodels_model_version") <= after["version"]
        assert 0 < value(samples, "manymodels_accuracy_ratio") <= 1
        assert value(samples, "manymodels_fold_duration_seconds_count") >= 1
        assert value(samples, "manymodels_fold_duration_seconds_bucket", le="+Inf") >= 1
        assert value(samples, "manymodels_sent_bytes_total", kind="weights") > 0
        assert value(samples, "manymodels_received_bytes_total") > 0
        assert value(samples, "manymodels_connected_peers") == 1
        assert value(samples, "manymodels_banned_peers") == 0
        assert value(samples, "manymodels_inbound_frames_refused_total", reason="truncated") == 0
        assert value(samples, "manymodels_uptime_seconds") > 0
        assert value(samples, "process_resident_memory_bytes") > 0
        (info,) = samples["manymodels_node_info"]
        assert info.labels == {"id": before["id"], "model": "logreg", "exchange": "weights", "rule": "fedavg"}
        for name in ("manymodels_messages_rejected_total", "manymodels_messages_refused_total",
                     "manymodels_messages_pulled_total", "manymodels_gate_events_total",
                     "manymodels_gate_blocked_peers", "manymodels_inbound_dropped_frames_total",
                     "manymodels_inbound_frames_refused_total"):
            assert all(s.value >= 0 for s in samples.get(name, [])), name
        assert "manymodels_messages_pulled_total" in samples and "manymodels_gate_blocked_peers" in samples
    finally:
        for home in homes:
            stop(home)
    assert not port_in_use("ip4", "127.0.0.1", port)  # the server went with the daemon
