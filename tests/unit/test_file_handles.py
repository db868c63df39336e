"""RabbitMQ reserves three file handles per quorum queue: the budget a province must fit in."""

from __future__ import annotations

from bus.brokeradmin import FileHandleBudget


def province(agencies: int, limit: int) -> FileHandleBudget:
    """A node holding the core (5 quorum queues, 1 classic) and two inboxes per agency, with
    every agency's adapter and four routers connected."""
    return FileHandleBudget(limit=limit, queues=6 + 2 * agencies, connections=agencies + 4)


def test_the_default_limit_does_not_hold_a_province_of_150_agencies() -> None:
    assert not province(150, 1024).fits()  # 918 reserved + 154 connections over the 924 usable
    assert province(100, 1024).fits()
    assert province(150, 65536).fits()


def test_more_queues_and_connections_count_against_the_same_limit() -> None:
    budget = FileHandleBudget(limit=1024, queues=300, connections=20)
    assert budget.needed() == 920 and budget.fits()
    assert not budget.fits(more_queues=2)  # 926
    assert not budget.fits(more_connections=5)  # 925
