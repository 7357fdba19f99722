"""How a daemon's processes log: one format (time, level, logger, message) on stderr, which is the
terminal for a foreground node and HOME/daemon.log for a detached one; set once when `node start`
runs, and the same in its worker process. Our loggers log at the level asked (-v: DEBUG, -q:
WARNING); libraries at WARNING (py-libp2p's also rate-limited: node/p2p/logs.py). `size` writes
bytes for people, in the log and in the CLI's tables alike."""
from __future__ import annotations

import logging


class _Format(logging.Formatter):
    """``2026-11-30 09:30:01 INFO node: ...``: our loggers named without the package."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(where)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.where = record.name.removeprefix("manymodels.")
        return super().format(record)


def configure(level: int = logging.INFO) -> None:
    """This process's one handler, on stderr (replacing any); our loggers at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Format())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("manymodels").setLevel(level)


def adopt(name: str) -> None:
    """A library that set up its own logging (Flower: a console handler, level DEBUG) logs through
    ours instead, at WARNING."""
    library = logging.getLogger(name)
    for handler in list(library.handlers):
        library.removeHandler(handler)
    library.setLevel(logging.WARNING)
    library.propagate = True


def size(n: int) -> str:
    """Bytes for people.

    >>> size(532), size(12_345), size(4_500_000)
    ('532 B', '12.3 KB', '4.5 MB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
