"""Files on disk, written atomically: a crash leaves the old file or the new one, never half of one.

A daemon's home directory holds its identity, its configuration, its state (sequence number,
replay window, peers, provenance) and its model checkpoint: a model trained on private data, so the
directory is 0700 and every file in it 0600, whatever existed before."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from manymodels.protocol import Identity, Weights
from manymodels.protocol.envelope import encode_payload


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_identity(path: str | os.PathLike, identity: Identity, *, overwrite: bool = False) -> None:
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite a key")
    atomic_write(path, identity.to_pem(), mode=0o600)


def load_identity(path: str | os.PathLike) -> Identity:
    return Identity.from_pem(Path(path).read_bytes())


class Home:
    """A daemon's home directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser().absolute()
        self.identity_file = self.path / "identity.pem"
        self.config_file = self.path / "config.json"
        self.state_file = self.path / "state.json"
        self.checkpoint_file = self.path / "model.msgpack"
        self.socket = self.path / "control.sock"
        self.log_file = self.path / "daemon.log"
        self.pid_file = self.path / "daemon.pid"

    def make_private(self) -> None:
        """The home 0700 and everything in it owner-only (0700 folders, 0600 files), also when it
        was created by hand or by an older version with the usual umask."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        for root, dirs, files in os.walk(self.path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o600)

    def identity(self) -> Identity:
        """The node's identity: created on first use, the same one ever after."""
        self.make_private()
        if self.identity_file.exists():
            return load_identity(self.identity_file)
        identity = Identity.generate()
        save_identity(self.identity_file, identity)
        return identity

    def read_json(self, path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return default

    def write_json(self, path: Path, value: Any) -> None:
        atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())

    def save_checkpoint(self, weights: Weights) -> None:
        atomic_write(self.checkpoint_file, encode_payload(weights))

    def load_checkpoint(self) -> Weights | None:
        """The last saved model, checked like a peer's message (a home can be copied around)."""
        try:
            data = self.checkpoint_file.read_bytes()
        except FileNotFoundError:
            return None
        return Weights.from_wire(msgpack.unpackb(data, raw=False))
