"""The daemon's local control socket: one JSON request per line, one JSON reply per line, over a
Unix socket in the home directory (mode 0600: only the owner can steer the node)."""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20
Handler = Callable[[dict], Awaitable[Any]]


class NotRunning(Exception):
    """No daemon answers on this home's control socket."""


class ControlError(Exception):
    """The daemon answered with an error."""


async def serve(path: Path, handler: Handler, *, task_status=None) -> None:
    import trio

    path.unlink(missing_ok=True)  # a socket left by a daemon that died
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the socket is created 0600: no moment in which others may connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            while b"\n" not in buffer and len(buffer) < MAX_LINE:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            try:
                request = json.loads(buffer.split(b"\n", 1)[0])
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("a request is a JSON object with a string 'cmd'")
                reply = {"ok": True, "result": await handler(request)}
            except Exception as exc:  # the caller gets the reason; the daemon keeps serving
                reply = {"ok": False, "error": str(exc) or type(exc).__name__}
            await stream.send_all(json.dumps(reply).encode() + b"\n")

    try:
        if task_status is not None:
            task_status.started()
        await trio.serve_listeners(one, [listener])
    finally:
        path.unlink(missing_ok=True)


def request(path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    """Send one command to the daemon and return its result (blocking; for the CLI)."""
    if not path.exists():
        raise NotRunning(f"no node is running in {path.parent} (no control socket)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(f"no node is running in {path.parent} (stale control socket)") from None
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("the node closed the control connection without answering")
            buffer += chunk
    reply = json.loads(buffer)
    if not reply["ok"]:
        raise ControlError(reply["error"])
    return reply["result"]
