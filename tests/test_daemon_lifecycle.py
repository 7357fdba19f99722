"""A daemon that says what it does, driven through the installed command: a timestamped log line per
period, -q to silence it, and Ctrl-C (a real SIGINT to the terminal's process group) or SIGTERM
stopping it cleanly: one line, exit 0, state saved, worker gone; `node stop` returns once the
process has exited."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from manymodels.node.runtime.control import NotRunning, request
from terminal import terminal_signals
from waiting import wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

EXE = Path(sys.executable).parent / "manymodels"
RECIPE = ["--dataset", "digits", "--model", "logreg", "--period", "1"]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
PERIOD_LINE = re.compile(STAMP + r" INFO node: version (\d+): folded (nothing|\d+ from .+); accuracy 0\.\d{3}; "
                         r"sent \d+(\.\d)? k?B, received \d+(\.\d)? k?B")


def version(home: Path) -> int:
    try:
        return request(home / "control.sock", "status", timeout=5)["version"]
    except (NotRunning, OSError):  # not up yet
        return -1


def workers(pid: int) -> list[int]:
    """The learner's worker processes `pid` started (from a trio thread: every thread's children);
    not multiprocessing's resource tracker, which exits on its own once its pipe closes."""
    return [int(c) for path in glob.glob(f"/proc/{pid}/task/*/children") for c in Path(path).read_text().split()
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextmanager
def foreground(home: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`node start` in the foreground, in a session of its own (so that SIGINT to its process group
    is what a terminal's Ctrl-C sends); killed if it is still running when the block ends."""
    daemon = subprocess.Popen([str(EXE), "node", "start", "--home", str(home), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=terminal_signals)
    try:
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


def ctrl_c(daemon: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C to a foreground daemon; what it printed once it has exited."""
    os.killpg(daemon.pid, signal.SIGINT)
    return daemon.communicate(timeout=30)


def saved_version(home: Path) -> int:
    return json.loads((home / "state.json").read_text())["version"]


def test_ctrl_c_stops_a_foreground_daemon_with_one_line_and_exit_0(tmp_path):
    home = tmp_path / "a"
    with foreground(home, *RECIPE) as daemon:
        wait_until(lambda: version(home), "three learning cycles", 90, until=lambda v: v >= 3, interval=0.2)
        worker = workers(daemon.pid)
        assert len(worker) == 1, "the daemon runs its learner in a worker process"
        out, err = ctrl_c(daemon)
    lines = (out + err).splitlines()
    assert daemon.returncode == 0, out + err
    assert "Traceback" not in out + err
    stopped = [line for line in lines
               if re.fullmatch(STAMP + r" INFO node: \S+ stopped at version (\d+) \(state saved\)", line)]
    assert len(stopped) == 1, lines
    assert int(stopped[0].rsplit("version ", 1)[1].split()[0]) == saved_version(home) >= 3
    periods = [line for line in lines if PERIOD_LINE.fullmatch(line)]
    assert len(periods) >= 2, lines
    assert len(lines) <= len(periods) + 3, lines  # listening, the learner running, the periods, stopped
    assert gone(worker[0])


def test_sigterm_stops_a_detached_daemon_which_logs_a_line_per_period(tmp_path):
    """--detach returns once the node listens, its learner still loading (the worker imports torch:
    seconds); the control socket already answers `status`, and --log-file puts the log elsewhere."""
    home = tmp_path / "b"
    started = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", "--log-file", "b.log",
                              *RECIPE], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.rstrip().endswith("; its learner is loading"), started.stdout
    pid = int((home / "daemon.pid").read_text())
    wait_until(lambda: version(home), "three learning cycles", 60, until=lambda v: v >= 3, interval=0.2)
    worker = workers(pid)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), "the daemon to exit", 30, interval=0.1)
    assert not (home / "daemon.log").exists()
    log = (tmp_path / "b.log").read_text().splitlines()
    assert "Traceback" not in "\n".join(log)
    assert re.fullmatch(STAMP + r" INFO node: \S+ listening on /ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+", log[0]), log
    assert len([line for line in log if PERIOD_LINE.fullmatch(line)]) >= 2, log
    assert re.fullmatch(STAMP + rf" INFO node: \S+ stopped at version {saved_version(home)} \(state saved\)",
                        log[-1]), log
    assert len(worker) == 1 and gone(worker[0])


def test_quiet_daemon_logs_no_period_lines_and_node_stop_returns_when_it_has_exited(tmp_path):
    home = tmp_path / "c"
    started = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", "-q", *RECIPE],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = int((home / "daemon.pid").read_text())
    wait_until(lambda: version(home), "three learning cycles", 60, until=lambda v: v >= 3, interval=0.2)
    stopped = subprocess.run([str(EXE), "node", "stop", "--home", str(home)], capture_output=True, text=True,
                             timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped ")
    assert gone(pid)  # already, when `node stop` returned
    assert saved_version(home) >= 3
    assert (home / "daemon.log").read_text() == ""  # -q: warnings only, and there were none


def test_a_foreground_daemon_logs_to_its_log_file_and_nothing_to_the_terminal(tmp_path):
    home, log_file = tmp_path / "d", tmp_path / "d.log"
    with foreground(home, "--log-file", str(log_file), *RECIPE) as daemon:
        wait_until(lambda: version(home), "two learning cycles", 90, until=lambda v: v >= 2, interval=0.2)
        out, err = ctrl_c(daemon)
    assert daemon.returncode == 0 and out + err == ""
    log = log_file.read_text().splitlines()
    assert "listening on" in log[0] and "stopped at version" in log[-1], log
    assert any(PERIOD_LINE.fullmatch(line) for line in log), log


def test_a_period_too_small_for_the_peers_rate_limits_is_refused_before_it_is_saved(cli, tmp_path):
    home = tmp_path / "e"
    for period in ("-1", "0", "0.05"):
        out = cli("node", "start", "--home", home, "--period", period, "--detach")
        assert out.returncode == 2 and out.stderr.startswith("error: --period must be at least 0.5 s"), out.stderr
        assert out.stderr.count("\n") == 1 and not (home / "config.json").exists()
