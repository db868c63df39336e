"""Acks of one AMQP channel, sent as few frames as is safe.

A quorum queue turns every ``basic.ack`` frame into a Raft command of its own (an entry in
RabbitMQ's write-ahead log, applied by the queue's process); one ack with ``multiple`` set
settles a whole run of deliveries as one command.  A router or an adapter acks a batch at a
time, so the acks of a batch are worth sending together.

**Safety.** ``multiple`` acks *every* delivery the channel still holds up to the tag,
including any the consumer never looked at (a message buffered for the next batch, one
pika kept after a consumer was cancelled).  Delivery tags of a channel are consecutive
(1, 2, 3 ... for every ``basic.deliver`` and ``basic.get-ok``), so this only ever sends a
multiple ack up to a tag when every tag before it is one this side has acked or rejected
itself; anything else (a gap: a tag not yet settled, or never seen) stops the run, and the
acks after it go one by one, as without this class.  Forgetting a settled tag is always safe
(it only stops a run); assuming one is never done.
"""

from __future__ import annotations

# settled tags remembered above a gap, at most: pika rejects, without telling its caller, the
# deliveries still waiting in its buffer when a consumer is cancelled, so a gap can stay
# forever; past this many, what is remembered is dropped (acks then go one by one)
MAX_REMEMBERED = 10_000


class AckRuns:
    """Which delivery tags of one channel are to be acked, and which are settled.

    ``ack(tag)`` and ``rejected(tag)`` as the consumer decides; ``frames()`` when it is about
    to write to the socket: the ``(tag, multiple)`` acks to send, in order.
    """

    def __init__(self) -> None:
        self._floor = 0  # every tag up to here is settled (acked or rejected) by this side
        self._settled: set[int] = set()  # settled tags above the floor
        self._to_ack: set[int] = set()

    def ack(self, tag: int) -> None:
        if tag > self._floor and tag not in self._settled:  # an ack already sent is not sent again
            self._to_ack.add(tag)

    def rejected(self, tag: int) -> None:
        """``tag`` was nacked or rejected: the channel no longer holds it."""
        self._to_ack.discard(tag)
        if tag > self._floor:
            self._settled.add(tag)

    def frames(self) -> list[tuple[int, bool]]:
        """The acks to write now: one multiple ack for the run of tags right above the floor
        that are all acked or settled, then each remaining one alone."""
        if not self._to_ack:
            return []
        top = self._floor
        while top + 1 in self._to_ack or top + 1 in self._settled:
            top += 1
        run = [t for t in self._to_ack if t <= top]
        rest = sorted(t for t in self._to_ack if t > top)
        out: list[tuple[int, bool]] = []
        if run:
            last = max(run)
            out.append((last, len(run) > 1))  # one tag alone needs no multiple
        out += [(t, False) for t in rest]
        self._floor = top
        self._settled = {t for t in self._settled if t > top} | set(rest)
        if len(self._settled) > MAX_REMEMBERED:  # a gap that does not close: stay bounded, and safe
            self._settled.clear()
        self._to_ack.clear()
        return out

    @property
    def pending(self) -> int:
        """Acks decided but not yet written."""
        return len(self._to_ack)
