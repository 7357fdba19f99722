"""Where a daemon listens: an ephemeral port is kept across restarts (so peers and bootstrap lists
that name the node stay valid), and a port that another process listens on is refused up front
(py-libp2p's listeners use SO_REUSEPORT, so binding it would silently succeed); QUIC's UDP ports alike."""
import socket

import pytest

from manymodels.node.runtime.listen import ListenError, check_listen, listen_addrs, port_in_use


@pytest.fixture
def taken():
    """A port some other program listens on (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_zero_becomes_the_port_of_the_last_run_when_it_is_free():
    port = free_port()
    before = [f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"]
    assert listen_addrs(["/ip4/127.0.0.1/tcp/0"], before) == [f"/ip4/127.0.0.1/tcp/{port}"]
    # another host or family in the last run's list is not this address's port
    assert listen_addrs(["/ip4/127.0.0.2/tcp/0"], before) == ["/ip4/127.0.0.2/tcp/0"]
    assert listen_addrs(["/ip4/127.0.0.1/tcp/0"], []) == ["/ip4/127.0.0.1/tcp/0"]


def test_a_port_taken_since_is_given_up_for_a_fresh_one(taken):
    assert port_in_use("ip4", "127.0.0.1", taken)
    assert listen_addrs(["/ip4/127.0.0.1/tcp/0"], [f"/ip4/127.0.0.1/tcp/{taken}"]) == ["/ip4/127.0.0.1/tcp/0"]


def test_an_explicit_port_in_use_is_refused(taken):
    with pytest.raises(ListenError, match=f"port {taken} is in use"):
        listen_addrs([f"/ip4/127.0.0.1/tcp/{taken}"], [])
    assert listen_addrs([f"/ip4/127.0.0.1/tcp/{free_port()}", "/ip4/127.0.0.1/udp/9/quic-v1"], [])[1].endswith("quic-v1")


def test_an_address_that_is_not_this_machines_is_refused():
    with pytest.raises(ListenError, match="cannot listen on 192.0.2.1 port 0: cannot assign requested address"):
        listen_addrs(["/ip4/192.0.2.1/tcp/0"], [])


def test_node_start_on_a_port_in_use_is_one_line(cli, tmp_path, taken):
    out = cli("node", "start", "--home", tmp_path / "n", "--listen", f"/ip4/127.0.0.1/tcp/{taken}",
              "--dataset", "digits", "--model", "logreg", "--period", "1")
    assert out.returncode == 2, out.stderr
    assert f"port {taken} is in use" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_a_listen_address_this_machine_cannot_have_is_refused_before_it_is_saved(cli, tmp_path):
    with pytest.raises(ListenError, match="not a multiaddr"):
        check_listen("/ip4/127.0.0.1/tcp")
    check_listen("/ip4/127.0.0.1/tcp/0")
    home = tmp_path / "n"
    out = cli("node", "start", "--home", home, "--listen", "/ip4/192.0.2.1/tcp/4005", "--detach")
    assert out.returncode == 2 and "cannot listen on 192.0.2.1" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and not (home / "config.json").exists()


def test_quic_ports_are_kept_and_checked_like_tcp_ones():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        with pytest.raises(ListenError, match=f"port {port} is in use"):
            listen_addrs([f"/ip4/127.0.0.1/udp/{port}/quic-v1"], [])
    peer = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    before = [f"/ip4/127.0.0.1/tcp/{free_port()}", f"/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{peer}"]
    assert listen_addrs(["/ip4/127.0.0.1/udp/0/quic-v1"], before) == [f"/ip4/127.0.0.1/udp/{port}/quic-v1"]
    check_listen("/ip4/127.0.0.1/udp/0/quic-v1")
    with pytest.raises(ListenError, match="QUIC v1 only"):
        check_listen("/ip4/127.0.0.1/udp/4001")
    with pytest.raises(ListenError, match="cannot listen on 192.0.2.1"):
        check_listen("/ip4/192.0.2.1/udp/0/quic-v1")
