"""What a terminal gives the processes it starts: Ctrl-C (SIGINT) at its default disposition.

The test process may carry SIGINT ignored, set at the C level by a library it loaded (Python's own
signal table does not show it), and a child inherits an ignored signal across exec: a test that sends
Ctrl-C would then wait for a process that never sees it. Pass `preexec_fn=terminal_signals`."""
from __future__ import annotations

import signal


def terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
