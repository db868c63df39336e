"""A long-running process's start-up objects leave the cyclic collector's walks; later garbage
is still collected."""

from __future__ import annotations

import gc
import os
import signal
import time
import weakref

import pytest

from bus import longrun


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_settle_freezes_what_exists_and_later_cycles_are_still_collected() -> None:
    try:
        longrun.settle()
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # this process's modules and their objects
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
        assert gc.get_freeze_count() == frozen  # a collection does not walk, or unfreeze, the frozen
    finally:
        gc.unfreeze()


def test_sigterm_takes_the_ctrl_c_path() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        longrun.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, between bytecodes
    finally:
        signal.signal(signal.SIGTERM, before)
