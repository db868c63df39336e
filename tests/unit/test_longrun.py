"""A long-running process's start-up objects leave the cyclic collector's walks; later garbage
is still collected."""

from __future__ import annotations

import gc
import weakref

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
