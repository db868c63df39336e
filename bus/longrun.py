"""What a long-running docbus process does once it is set up (``docbus router run``,
``docbus adapter run``, the benchmark's sending agencies)."""

from __future__ import annotations

import gc
import signal
from types import FrameType


def settle() -> None:
    """Take what was made while starting out of the cyclic garbage collector's sight.

    A full collection walks every object Python tracks; in a router at 200 documents/s those
    walks took 17–32 ms each, every few seconds, and every document behind one waited for it
    (docs/performance-history.md, step 12).  What a process makes while starting (modules, schemas,
    the trust store, the broker connection: some 40,000 objects) lives as long as the
    process, so walking it again finds nothing.  Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def stop_on_sigterm() -> None:
    """Make SIGTERM stop the process the way Ctrl-C does: finish cleanly, say how much was done.

    systemd, ``kill`` and container runtimes stop a service with SIGTERM, whose default ends
    Python at once: nothing is lost (a message is acked only after it is stored, so the
    broker hands the unacknowledged ones to the next consumer), but the process leaves
    without closing its connection or reporting.  Raising ``KeyboardInterrupt`` takes the
    path Ctrl-C takes, which the router and the adapter already stop on.  It also works for
    a process started in the background by a non-interactive shell, where SIGINT is ignored.
    """
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
