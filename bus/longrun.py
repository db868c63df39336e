"""What a long-running docbus process does once it is set up (``docbus router run``,
``docbus adapter run``, the benchmark's sending agencies)."""

from __future__ import annotations

import gc


def settle() -> None:
    """Take what was made while starting out of the cyclic garbage collector's sight.

    A full collection walks every object Python tracks; in a router at 200 documents/s those
    walks took 17–32 ms each, every few seconds, and every document behind one waited for it
    (docs/PERFORMANCE.md, step 12).  What a process makes while starting (modules, schemas,
    the trust store, the broker connection: some 40,000 objects) lives as long as the
    process, so walking it again finds nothing.  Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()
