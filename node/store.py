"""Files on disk, written atomically: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from manymodels.protocol import Identity


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
