"""The console script's small things (issue 11): --version, defaults in --help, --bootstrap checked
before anything is saved, full digests and ids (`models --json`, `--wide`), `pull` by a unique digest
prefix with a progress line when it takes more than a second. Daemon-backed: two logreg daemons."""
import json
import os
import pty
import re
import select
import subprocess
import time
from importlib.metadata import version

import pytest

from manymodels.cli.errors import UserError
from manymodels.cli.network import digest_with_prefix
from manymodels.node.runtime.daemon import DaemonConfig
from manymodels.node.sim.spec import SimulationConfig
from manymodels.protocol import Identity
from test_daemon import EXE, start, status, stop
from waiting import wait_until

RECIPE = ["--dataset", "digits", "--partition", "iid", "--num-partitions", "2", "--model", "logreg", "--period", "1"]
NOBODY = Identity(bytes(range(32))).peer_id  # a valid peer id no daemon here has


def flat(text: str) -> str:
    """Rich's help or table as one line of words: box lines gone, wrapped cells joined."""
    return " ".join(re.sub(r"[│┃║╭╮╰╯─━┏┓┗┛┡┩┣┫╇╈┳┻┯┷]", " ", text).split())


def test_version_prints_the_installed_version(cli):
    for flag in ("--version", "-V"):
        out = cli(flag)
        assert out.returncode == 0 and out.stdout == f"manymodels {version('manymodels')}\n", out.stderr


def test_help_shows_the_defaults(cli):
    start_help = flat(cli("node", "start", "--help").stdout)
    config = DaemonConfig()
    assert f"[default: ({config.period}, or the saved value)]" in start_help
    assert f"[default: ({config.listen[0]}, or the saved value)]" in start_help
    assert "only this machine can connect" in start_help  # the default listen address is loopback
    assert f"[default: ({config.recipe.model}, or the saved value)]" in start_help
    simulate_help = flat(cli("simulate", "--help").stdout)
    defaults = SimulationConfig()
    for option, value in (("--nodes", defaults.nodes), ("--rounds", defaults.rounds), ("--lr", f"({defaults.lr})"),
                          ("--accept-licence", f"({','.join(defaults.accept_licences)})")):
        assert re.search(rf"{option} \w+ [^[]*\[default: {re.escape(str(value))}\]", simulate_help), option


@pytest.mark.parametrize("bad", ["/ip4/127.0.0.1/tcp/4001", "127.0.0.1:4001", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooW",
                                 f"/p2p/{NOBODY}"])
def test_a_bootstrap_address_without_a_peer_id_is_refused_before_anything_is_saved(cli, tmp_path, bad):
    home = tmp_path / "home"
    out = cli("node", "start", "--home", home, "--bootstrap", bad, "--detach", timeout=30)
    assert out.returncode == 2 and "--bootstrap" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert not home.exists()


def test_an_ambiguous_digest_prefix_names_every_match_in_full():
    a, b = "ab" + "0" * 62, "ab" + "1" * 62
    assert digest_with_prefix("ab1", [a, b]) == b
    with pytest.raises(UserError, match=f"digest prefix ab matches 2 models: {a}, {b}$"):
        digest_with_prefix("ab", [a, b, a])


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    homes = [root / "a", root / "b"]
    try:
        start(homes[0], *RECIPE, "--partition-id", "0")
        start(homes[1], *RECIPE, "--partition-id", "1", "--bootstrap", status(homes[0])["addrs"][0])
        yield homes
    finally:
        for home in homes:
            stop(home)


def known_models(cli, home) -> list[dict]:
    """`models --json`, once it lists this node's model and the other's."""
    return wait_until(lambda: json.loads(cli("models", "--home", home, "--json").stdout),
                      "a model of each node", until=lambda rows: len(rows) == 2 and all(m["digest"] for m in rows))


@pytest.mark.slow
def test_models_json_and_wide_tables_hold_full_digests_and_ids(cli, network):
    ids = {status(home)["id"] for home in network}
    rows = known_models(cli, network[0])
    assert {m["peer"] for m in rows} == ids
    assert all(re.fullmatch("[0-9a-f]{64}", m["digest"]) for m in rows)
    narrow = cli("models", "--home", network[0], env={"COLUMNS": "80"}).stdout
    assert "…" in narrow and not any(m["digest"] in narrow for m in rows)
    wide = cli("models", "--home", network[0], "--wide", env={"COLUMNS": "80"}).stdout
    assert "…" not in wide
    lines = wide.splitlines()  # each id and digest whole on one line, to copy from
    assert all(any(peer in line for line in lines) for peer in ids)
    assert sum(bool(re.search(r"\b[0-9a-f]{64}\b", line)) for line in lines) == 2
    peers = cli("peers", "--home", network[0], "--wide", env={"COLUMNS": "80"}).stdout
    assert status(network[1])["id"] in peers and "…" not in peers


@pytest.mark.slow
def test_pull_takes_a_unique_digest_prefix_and_says_clearly_when_it_matches_nothing(cli, network):
    def pull_newest() -> tuple[dict, subprocess.CompletedProcess]:
        remote = next(m for m in known_models(cli, network[0]) if not m.get("local"))
        return remote, cli("pull", "any", remote["digest"][:12].upper(), "--home", network[0], "--json")
    # the peer's model changes every period (1 s here): a digest listed a moment ago may be superseded
    remote, pulled = wait_until(pull_newest, "a pull by prefix", 30, until=lambda r: r[1].returncode == 0)
    result = json.loads(pulled.stdout)  # a progress line, if any, went to stderr
    assert result["digest"] == remote["digest"] and result["author"] == remote["peer"]
    none = cli("pull", "any", "0123456789abcdef", "--home", network[0])
    assert none.returncode == 2 and "digest prefix 0123456789abcdef matches no model the node knows" in none.stderr
    not_hex = cli("pull", "any", "xyz", "--home", network[0])
    assert not_hex.returncode == 2 and "is not a digest" in not_hex.stderr
    unknown = "5a" * 32  # whole: asked for as it is, and the error repeats it whole
    nobody = cli("pull", "any", unknown, "--home", network[0])
    assert nobody.returncode == 2 and f"no peer is known to hold {unknown}" in nobody.stderr, nobody.stderr


def pulling(home, digest: str, stderr, env=None) -> subprocess.Popen:
    """A pull that cannot end soon: from a peer that nobody here is (the daemon waits for its answer)."""
    return subprocess.Popen([str(EXE), "pull", NOBODY, digest, "--home", str(home)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_a_pull_that_takes_more_than_a_second_says_so(network):
    digest = "6b" * 32
    began = time.monotonic()
    plain = pulling(network[0], digest, subprocess.PIPE)
    try:
        line = plain.stderr.readline().decode()
        assert line == f"pulling {digest} from {NOBODY}…\n"
        assert time.monotonic() - began >= 1
    finally:
        plain.terminate()
        plain.wait(10)
    # on a terminal: a spinner with the same words (rich redraws it; the words are in the bytes)
    digest = "7c" * 32
    main, other = pty.openpty()
    spinner = pulling(network[0], digest, other, env={"TERM": "xterm", "COLUMNS": "200"})
    os.close(other)
    try:
        read: list[bytes] = []
        seen = wait_until(lambda: read_more(main, read), "the spinner", 30,
                          until=lambda text: f"pulling {digest} from {NOBODY}…" in text)
        assert "\x1b[" in seen  # drawn as a terminal line, not printed plain
    finally:
        spinner.terminate()
        spinner.wait(10)
        os.close(main)


def read_more(fd: int, read: list[bytes]) -> str:
    """All a pseudo-terminal has shown so far (what arrived since the last call added to `read`;
    one read: a spinner never stops writing)."""
    if select.select([fd], [], [], 0.2)[0]:
        try:
            read.append(os.read(fd, 1 << 16))
        except OSError:  # the other side closed
            pass
    return b"".join(read).decode(errors="replace")


@pytest.mark.slow
def test_a_bad_bootstrap_leaves_a_saved_config_as_it_was(cli, network, tmp_path):
    home = tmp_path / "stopped"  # a node's home with its saved config, the node not running
    home.mkdir()
    config = (network[0] / "config.json").read_bytes()
    (home / "config.json").write_bytes(config)
    out = cli("node", "start", "--home", home, "--bootstrap", "/ip4/127.0.0.1/tcp/4001", "--period", "3")
    assert out.returncode == 2 and "has no /p2p/<peer id>" in out.stderr, out.stderr
    assert (home / "config.json").read_bytes() == config
