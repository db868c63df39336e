"""A batch's acks as few frames as is safe (bus.acks): never a multiple ack over a tag this side did not settle."""

from __future__ import annotations

from bus.acks import AckRuns


def acked(runs: AckRuns, *tags: int) -> list[tuple[int, bool]]:
    for t in tags:
        runs.ack(t)
    return runs.frames()


def test_a_batch_in_a_row_is_one_multiple_ack() -> None:
    runs = AckRuns()
    assert acked(runs, 3, 1, 2, 4) == [(4, True)]
    assert acked(runs, 5) == [(5, False)]  # one alone needs no multiple
    assert acked(runs) == [] and runs.pending == 0


def test_a_tag_not_settled_stops_the_run() -> None:
    runs = AckRuns()  # 3 is held (buffered for the next batch, or its marks not committed)
    assert acked(runs, 1, 2, 4, 5) == [(2, True), (4, False), (5, False)]
    assert acked(runs, 3) == [(3, False)]  # 4 and 5 were sent already: not again
    assert acked(runs, 6, 7) == [(7, True)]  # the floor moved past 5


def test_a_tag_never_seen_is_never_covered() -> None:
    runs = AckRuns()  # tag 1 went to a consumer this side never heard of
    assert acked(runs, 2, 3) == [(2, False), (3, False)]


def test_a_rejected_tag_does_not_stop_the_run() -> None:
    runs = AckRuns()  # 2 was nacked: the channel no longer holds it, a multiple ack cannot touch it
    runs.rejected(2)
    assert acked(runs, 1, 3, 4) == [(4, True)]


def test_an_ack_after_a_reject_or_twice_is_not_sent() -> None:
    runs = AckRuns()
    runs.rejected(1)
    assert acked(runs, 1) == []
    assert acked(runs, 2, 2) == [(2, False)]
    assert acked(runs, 2) == []


def test_a_gap_that_never_closes_keeps_memory_bounded_and_acks_single(monkeypatch) -> None:
    from bus import acks

    monkeypatch.setattr(acks, "MAX_REMEMBERED", 50)
    runs = AckRuns()  # tag 1 was rejected by pika unseen: no run may ever cover it
    frames = [f for t in range(2, 200) for f in acked(runs, t)]
    assert frames == [(t, False) for t in range(2, 200)]
    assert len(runs._settled) <= 50
    assert acked(runs, 200, 201) == [(200, False), (201, False)]
