"""`--config FILE.toml` (cli/config_file.py) through the installed console script: the file's values
are used, flags override them, a path is relative to the file, a mistake in the file is one line and
exit 2 (and `node start` saves nothing), `simulate --save-config` writes a file that runs the same
numbers again."""
import json
import re

import numpy as np
import pytest

from test_cli_small import flat
from test_daemon import status, stop

TINY = ["--nodes", "3", "--rounds", "2", "--dataset", "digits", "--model", "logreg"]


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_error_line(out, *words: str) -> str:
    """The command failed as a user's mistake: exit 2, one `error:` line holding `words`, no traceback."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def test_help_names_both_options(cli):
    simulate = flat(cli("simulate", "--help").stdout)
    assert "--config FILE.toml Read options from this TOML file" in simulate
    assert "--save-config FILE.toml Write this run's options" in simulate and "then run as usual" in simulate
    assert "--config FILE.toml" in flat(cli("node", "start", "--help").stdout)


@pytest.mark.parametrize("text, words", [
    ("nodes = 3\nnodse = 4\n", ["c.toml: unknown key 'nodse'", "did you mean 'nodes'"]),
    ("local_epoch = 2\n", ["unknown key 'local_epoch'", "'local-epochs'"]),
    ("zzz = 1\n", ["unknown key 'zzz'", "simulate --help` without --"]),
    ("nodes = 3\nrounds =\n", ["c.toml is not valid TOML", "line 2"]),
    ('nodes = "three"\n', ['c.toml: nodes = "three" should be an integer']),
    ("nodes = 3.5\n", ["nodes = 3.5 should be an integer"]),
    ("lr = true\n", ["lr = true should be a number"]),
    ('attack = "noise:0.2"\n', ['attack = "noise:0.2" should be an array of: a string']),
    ('shuffle = "no"\n', ['shuffle = "no" should be true or false']),
    ("local-epochs = 1\nlocal_epochs = 2\n", ["local-epochs is given twice"]),
    ("nodes = 0\n", ["--nodes", "must be at least 1", "(nodes from", "c.toml)"]),  # the simulator's own check
])
def test_a_mistake_in_the_file_is_one_line_naming_the_file_and_the_key(cli, tmp_path, text, words):
    write(tmp_path / "c.toml", text)
    one_error_line(cli("simulate", "--config", "c.toml", timeout=60), *words)


def test_a_missing_file_and_a_bad_value_from_the_command_line(cli, tmp_path):
    one_error_line(cli("simulate", "--config", "nowhere.toml"), "cannot read config file nowhere.toml")
    write(tmp_path / "c.toml", "seed = 3\n")
    line = one_error_line(cli("simulate", "--config", "c.toml", "--rounds", "0", timeout=60), "--rounds")
    assert "c.toml" not in line  # the value at fault is not the file's


def test_a_relative_path_in_the_file_is_relative_to_the_file(cli, tmp_path):
    write(tmp_path / "conf" / "c.toml", 'probe = "probe.npy"\n')
    one_error_line(cli("simulate", "--config", "conf/c.toml", timeout=60),
                   f"cannot read probe set {tmp_path / 'conf' / 'probe.npy'}")


def summary(out) -> dict:
    """A --json report's numbers and config, but its wall time and the probe file's name as given."""
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    return {**{k: v for k, v in report["summary"].items() if k != "wall_seconds"},
            "config": {k: v for k, v in report["config"].items() if k != "probe_file"}}


@pytest.mark.slow
def test_save_config_round_trips_and_flags_override_the_file(cli, tmp_path):
    probe = tmp_path / "data" / "probe.npy"
    probe.parent.mkdir()
    np.save(probe, np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32))  # digits: 8x8 images
    first = cli("simulate", *TINY, "--local-epochs", "2", "--no-shuffle", "--attack", "gaussian:0.34",
                "--probe", "data/probe.npy", "--save-config", "runs/saved.toml", "--report", "run.json", "--json")
    saved = (tmp_path / "runs" / "saved.toml").read_text()
    assert "options written to runs/saved.toml" in first.stderr
    assert re.search(r'^attack = \[\s*"gaussian:0.34",?\s*\]$', saved, re.M) and "shuffle = false" in saved
    assert f'probe = "{probe}"' in saved  # made absolute: the file reads a relative path as relative to itself
    assert "local-epochs = 2" in saved and not re.search(r"^(report|json|save-config|config|hidden) ", saved, re.M)
    again = cli("simulate", "--config", "runs/saved.toml", "--json")
    assert summary(again) == summary(first) and json.loads(again.stdout)["config"]["probe_file"] == str(probe)
    assert summary(first)["config"]["attacks"] == ["gaussian:0.34"]
    overridden = summary(cli("simulate", "--config", "runs/saved.toml", "--rounds", "1", "--json"))
    assert overridden["config"]["rounds"] == 1 and overridden["config"]["local_epochs"] == 2


def test_node_start_refuses_a_bad_file_and_saves_nothing(cli, tmp_path):
    home = tmp_path / "conf" / "a"
    for text, words in (('home = "a"\nperiod = -1\n', ["--period", "(period from conf/node.toml)"]),
                        ('home = "a"\nmdns = "yes"\n', ['conf/node.toml: mdns = "yes" should be true or false']),
                        ('home = "a"\nbootstrap = "/ip4/127.0.0.1/tcp/1"\n', ["bootstrap", "an array"]),
                        ('home = "a"\nmodle = "logreg"\n', ["unknown key 'modle'", "'model'"])):
        write(tmp_path / "conf" / "node.toml", text)
        one_error_line(cli("node", "start", "--config", "conf/node.toml", "--detach", timeout=60), *words)
        assert not home.exists()


def test_study_value_takes_a_file_too(cli, tmp_path):
    write(tmp_path / "study.toml", 'nodes = 1\n')
    one_error_line(cli("study", "value", "--config", "study.toml", timeout=60), "(nodes from study.toml)")


def test_up_takes_a_file_too(cli, tmp_path):
    write(tmp_path / "net.toml", 'home-root = "mm"\nperiod = 0.1\n')
    one_error_line(cli("up", "3", "--config", "net.toml", timeout=60), "--period must be at least 0.5 s",
                   "(period from net.toml)")
    write(tmp_path / "net.toml", 'home-root = "mm"\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n')
    one_error_line(cli("up", "3", "--config", "net.toml", timeout=60), "unknown key 'listen'")
    assert not (tmp_path / "mm").exists()


@pytest.mark.slow
def test_node_start_saves_the_files_options_under_the_flags_and_runs_with_them(cli, tmp_path):
    home = tmp_path / "conf" / "a"  # `home = "a"` is relative to the file, not to the current directory
    write(tmp_path / "conf" / "node.toml", 'home = "a"\ndataset = "digits"\nmodel = "logreg"\nperiod = 5\n'
                                           'listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\nbatch-size = 16\n'
                                           'partition = "iid"\nnum_partitions = 2\npartition-id = 1\n')
    try:
        out = cli("node", "start", "--config", "conf/node.toml", "--period", "1", "--detach", timeout=180)
        assert out.returncode == 0, out.stderr
        config = json.loads((home / "config.json").read_text())
        assert config["period"] == 1.0 and config["mdns"] is False and config["recipe"]["batch_size"] == 16
        assert config["listen"] == ["/ip4/127.0.0.1/tcp/0"]
        assert {k: config["recipe"][k] for k in ("dataset", "model", "partition", "num_partitions", "partition_id")} \
            == {"dataset": "digits", "model": "logreg", "partition": "iid", "num_partitions": 2, "partition_id": 1}
        assert status(home)["model"] == "logreg"
    finally:
        stop(home)
