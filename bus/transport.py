"""Transports: the real one over RabbitMQ (pika) and an in-memory one for fast unit tests.

Both offer the same small surface: ``apply`` a topology, ``publish`` with a confirm (it
returns only once the broker has taken responsibility, or raises), ``publish_many`` with
confirms streamed (one wait for a whole batch, a bounded window for a lazy stream of
chunks), ``get`` one delivery, and ``consume`` / ``consume_batches`` deliveries into a
handler that acks or rejects each one explicitly.  Callers never see pika: every broker
failure becomes :class:`BrokerUnavailable` or :class:`DeliveryFailed`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika
import pika.exceptions as pex
from pika.adapters.utils.connection_workflow import AMQPConnectorException, AMQPConnectorStackTimeout

from bus.acks import AckRuns
from bus.config import redact
from bus.errors import BrokerUnavailable, DocbusError, NotFound
from bus.topology import Topology

log = logging.getLogger(__name__)
# What pika raises when a connection cannot be made: its AMQP errors, the socket's, and the
# connector's own (a broker that takes the TCP connection but never answers the handshake
# raises AMQPConnectorStackTimeout, which is none of the others).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (pex.AMQPError, OSError, AMQPConnectorException)
QUIET_AFTER = 0.02  # s without deliveries before consume_batches calls on_idle
COALESCE_BYTES = 256 * 1024  # frames joined into one socket write, at most


def _produce_coalesced(self: Any) -> None:
    """pika's ``_AsyncTransportBase._produce``, writing queued frames together.

    pika hands every frame to the socket with its own ``send()``: a publish is three (method,
    header, body), each ack one.  A router answering a batch queues dozens of frames, and on
    this kind of host a ``send()`` to the broker costs 10-40 us of CPU in the kernel, about a
    tenth of the router's time.  Joining the queued frames (up to ``COALESCE_BYTES``; large
    file chunks go as they are) writes the same bytes in the same order with one call.
    Partial sends and the byte count are kept exactly as pika keeps them.
    """
    buffers = self._tx_buffers
    while buffers:
        if len(buffers) > 1 and len(buffers[0]) < COALESCE_BYTES:
            joined = [buffers.popleft()]
            size = len(joined[0])
            while buffers and size + len(buffers[0]) <= COALESCE_BYTES:
                size += len(buffers[0])
                joined.append(buffers.popleft())
            buffers.appendleft(b"".join(joined))
        sent = self._sigint_safe_send(self._sock, buffers[0])
        chunk = buffers.popleft()
        if sent < len(chunk):
            buffers.appendleft(chunk[sent:])
        self._tx_buffered_byte_count -= sent


def _install_frame_coalescing() -> None:
    """Use :func:`_produce_coalesced` for plain TCP connections (TLS keeps pika's own)."""
    from pika.adapters.utils import io_services_utils as nbio

    plain = getattr(nbio, "_AsyncPlaintextTransport", None)
    if plain is not None and "_produce" not in vars(plain) and hasattr(nbio._AsyncTransportBase, "_produce"):
        plain._produce = _produce_coalesced


_install_frame_coalescing()


class DeliveryFailed(DocbusError):
    """The broker refused, returned or did not confirm a publish."""

    reason = "delivery-failed"


@dataclass
class Delivery:
    body: bytes
    routing_key: str
    message_id: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    redelivered: bool = False
    _ack: Callable[[], None] = lambda: None
    _reject: Callable[[bool], None] = lambda requeue: None

    def ack(self) -> None:
        self._ack()

    def reject(self, requeue: bool = True) -> None:
        self._reject(requeue)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish with :meth:`Transport.publish_many`."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str = ""
    headers: dict[str, Any] | None = None
    user_id: str | None = None  # the publishing broker user, which RabbitMQ checks


Handler = Callable[[Delivery], None]
BatchHandler = Callable[[list[Delivery]], None]


class Transport(Protocol):
    def apply(self, topology: Topology) -> None: ...
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str = "",
        headers: dict[str, Any] | None = None,
        user_id: str | None = None,
    ) -> None: ...
    def publish_many(self, items: Iterable[Outgoing], *, window: int | None = None) -> list[DeliveryFailed | None]: ...
    def get(self, queue: str) -> Delivery | None: ...
    def consume_batches(
        self,
        queues: str | Sequence[str],
        handler: BatchHandler,
        *,
        prefetch: int | Sequence[int] = 10,
        max_batch: int = 100,
        share: Sequence[int | None] | None = None,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None: ...
    def consume(
        self,
        queues: str | Sequence[str],
        handler: Callable[[Delivery], None],
        *,
        prefetch: int = 10,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None: ...
    def delete(self, topology: Topology) -> None: ...
    def close(self) -> None: ...


def _one_by_one(handler: Handler) -> BatchHandler:
    def each(batch: list[Delivery]) -> None:
        for delivery in batch:
            handler(delivery)

    return each


def _caps(names: list[str], max_batch: int, share: Sequence[int | None] | None) -> dict[str, int | None]:
    """Each queue's share of a batch (None: no share of its own), checked."""
    shares = list(share) if share is not None else [None] * len(names)
    if len(shares) != len(names) or any(n is not None and n < 1 for n in shares):
        raise ValueError("share needs one positive count (or None) per queue")
    return {q: None if n is None else min(n, max_batch) for q, n in zip(names, shares, strict=True)}


def _quotas(names: list[str], max_batch: int, caps: dict[str, int | None], waiting: dict[str, int]) -> dict[str, int]:
    """How many of each queue's waiting deliveries go into the next batch: queues in order,
    none more than its share or than the queues before it took (whichever is more), and the
    places of later queues with a share kept for them."""
    kept = {q: min(cap, waiting[q]) if cap is not None else 0 for q, cap in caps.items()}
    room, quotas = max_batch, dict[str, int]()
    for i, q in enumerate(names):
        later = sum(kept[x] for x in names[i + 1 :])
        cap = caps[q]
        most = max_batch if cap is None else max(cap, max_batch - room)  # keeps pace with the earlier queues
        quotas[q] = max(0, min(waiting[q], most, room - later))
        room -= quotas[q]
    return quotas


def _describe(exc: BaseException) -> str:
    """The innermost cause pika wraps (e.g. 'Connection refused'), not its wrapper's name."""
    for _ in range(5):
        inner = getattr(exc, "exception", None) or (exc.args[0] if exc.args else None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    if isinstance(exc, AMQPConnectorStackTimeout):
        return (
            "it took the connection but did not answer the AMQP handshake: a node out of file handles"
            " does this (raise its open-file limit, see the README), then restart it"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _refused_queue(what: str, exc: pex.ChannelClosedByBroker) -> DocbusError:
    """A queue the broker would not let us read: missing (the bus is not set up) or forbidden."""
    if exc.reply_code == 404:
        return NotFound(f"{what}: it does not exist on the broker; run 'docbus init' to declare the bus")
    return DocbusError(f"{what}: {exc.reply_text}", reason="access-refused")


def broker_unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """The one error a pika failure to reach ``url`` becomes (``exc`` is one of ``CONNECT_ERRORS``)."""
    detail = _describe(exc)
    return BrokerUnavailable(
        f"RabbitMQ is not reachable at {redact(url)} ({detail}); start it with 'rabbitmq-server -detached' "
        "or set DOCBUS_AMQP_URL"
    )


class AmqpTransport:
    """RabbitMQ through one pika BlockingConnection with publisher confirms.

    One instance belongs to one thread.  Heartbeats and a blocked-connection timeout keep
    a long-running process from hanging silently on a dead or blocked broker.
    """

    def __init__(
        self, url: str, *, heartbeat: int = 30, blocked_timeout: float = 60.0, connect_timeout: float = 15.0
    ) -> None:
        self.url = url
        params = pika.URLParameters(url)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = blocked_timeout
        params.connection_attempts = 1
        params.socket_timeout = min(5.0, connect_timeout)
        params.stack_timeout = connect_timeout  # TCP connect + AMQP handshake, together
        self._params = params
        self._stream: Any = None  # the channel for publish_many, opened on first use
        self._seq = 0
        self._unconfirmed: dict[int, int] = {}  # publish sequence number -> index in the batch
        self._failed: dict[int, DeliveryFailed] = {}
        self._returned: dict[tuple[str, str], int] = {}
        self._acks = AckRuns()  # of self._ch, written together by the next pump
        try:
            self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()
        except pex.ProbableAccessDeniedError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ at {redact(url)} refused this user access to the vhost"
                " (an agency the data centre disabled has none: 'docbus agency list' shows it)",
                reason="access-refused",
            ) from exc
        except pex.ProbableAuthenticationError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ at {redact(url)} refused the credentials", reason="access-refused"
            ) from exc
        except CONNECT_ERRORS as exc:
            raise broker_unavailable(url, exc) from exc

    # -- topology
    def apply(self, topology: Topology) -> None:
        try:
            for ex in topology.exchanges:
                self._ch.exchange_declare(ex.name, exchange_type=ex.type, durable=True)
            for q in topology.queues:
                self._ch.queue_declare(q.name, durable=True, arguments=dict(q.arguments))
            for b in topology.bindings:
                self._ch.queue_bind(b.queue, b.exchange, routing_key=b.routing_key)
            for b in topology.retired:  # after the bindings that replace them: nothing goes unrouted
                self._ch.queue_unbind(b.queue, b.exchange, routing_key=b.routing_key)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"the broker refused the topology: {exc.reply_text}", reason="topology") from exc
        except pex.AMQPError as exc:
            raise broker_unavailable(self.url, exc) from exc

    def delete(self, topology: Topology) -> None:
        try:
            for q in topology.queues:
                self._ch.queue_delete(q.name)
            for ex in topology.exchanges:
                self._ch.exchange_delete(ex.name)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"the broker refused to delete: {exc.reply_text}", reason="access-refused") from exc
        except pex.AMQPError as exc:
            raise broker_unavailable(self.url, exc) from exc

    def consumers(self, queue: str) -> int:
        """How many consumers ``queue`` has now, from the queue itself (the management API's
        statistics lag by seconds); raises :class:`NotFound` if there is no such queue."""
        try:
            return int(self._ch.queue_declare(queue, passive=True).method.consumer_count)
        except pex.ChannelClosedByBroker as exc:  # the channel is gone with it
            raise NotFound(f"no queue {queue} on the broker: {exc.reply_text}") from exc
        except pex.AMQPError as exc:
            raise broker_unavailable(self.url, exc) from exc

    # -- messages
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str = "",
        headers: dict[str, Any] | None = None,
        user_id: str | None = None,
    ) -> None:
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/xml",
            message_id=message_id or None,
            headers=headers or {},
            user_id=user_id,
            timestamp=int(time.time()),
        )
        try:
            self._write_acks()  # acks decided so far go out with this publish
            self._ch.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)
        except pex.UnroutableError as exc:
            raise DeliveryFailed(
                f"no queue takes {exchange}/{routing_key}: the recipient has no inbox", reason="unroutable"
            ) from exc
        except pex.NackError as exc:
            raise DeliveryFailed(
                f"the broker refused the message for {exchange}/{routing_key}", reason="nacked"
            ) from exc
        except pex.ChannelClosedByBroker as exc:
            raise DeliveryFailed(
                f"the broker closed the channel: {exc.reply_code} {exc.reply_text}", reason="refused-by-broker"
            ) from exc
        except (pex.AMQPError, OSError) as exc:
            raise broker_unavailable(self.url, exc) from exc

    def publish_many(self, items: Iterable[Outgoing], *, window: int | None = None) -> list[DeliveryFailed | None]:
        """Publish ``items`` with confirms streamed, not one round trip each; wait for all.

        Returns, per item, None once the broker confirmed it, or why it failed (returned as
        unroutable, or nacked).  A broker that goes away raises :class:`BrokerUnavailable`;
        then nothing of the batch may be taken as published.  ``window``: at most this many
        unconfirmed at a time, so a lazy ``items`` (the chunks of a large file) is never
        all in memory.

        pika's BlockingConnection offers only one blocking confirm per message, so this
        publishes on a second channel through its asynchronous core and counts the
        confirms as they arrive (RabbitMQ numbers a channel's publishes 1, 2, 3...).
        """
        ch = self._stream_channel()
        self._write_acks()  # the last batch's, written with these publishes
        self._unconfirmed.clear()
        self._failed.clear()
        self._returned.clear()
        now = int(time.time())
        count = 0
        try:
            for i, item in enumerate(items):
                if window is not None and len(self._unconfirmed) >= window:
                    ch._flush_output(lambda: len(self._unconfirmed) < window)
                props = pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/xml",
                    message_id=item.message_id or None,
                    headers=item.headers or {},
                    user_id=item.user_id,
                    timestamp=now,
                )
                self._seq += 1
                self._unconfirmed[self._seq] = i
                self._returned[(item.routing_key, item.message_id)] = i
                ch._impl.basic_publish(item.exchange, item.routing_key, item.body, properties=props, mandatory=True)
                count = i + 1
            if count:
                ch._flush_output(lambda: not self._unconfirmed)
        except pex.ChannelClosedByBroker as exc:
            self._stream = None
            raise DeliveryFailed(
                f"the broker closed the channel: {exc.reply_code} {exc.reply_text}", reason="refused-by-broker"
            ) from exc
        except (pex.AMQPError, OSError) as exc:
            self._stream = None
            raise broker_unavailable(self.url, exc) from exc
        results: list[DeliveryFailed | None] = [None] * count
        for i, failure in self._failed.items():
            results[i] = failure
        return results

    def _stream_channel(self) -> Any:
        if self._stream is None or not self._stream.is_open:
            try:
                ch = self._conn.channel()
                ready: list[bool] = []
                ch._impl.confirm_delivery(
                    ack_nack_callback=self._on_stream_confirm, callback=lambda _f: ready.append(True)
                )
                ch._impl.add_on_return_callback(self._on_stream_return)
                ch._flush_output(lambda: bool(ready))
            except (pex.AMQPError, OSError) as exc:
                raise broker_unavailable(self.url, exc) from exc
            self._stream, self._seq = ch, 0
        return self._stream

    def _on_stream_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = [t for t in self._unconfirmed if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            i = self._unconfirmed.pop(tag, None)
            if i is not None and nacked:
                self._failed[i] = DeliveryFailed("the broker refused the message", reason="nacked")

    def _on_stream_return(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        # a return comes before the confirm of the same message
        i = self._returned.get((method.routing_key, props.message_id or ""))
        if i is not None:
            self._failed[i] = DeliveryFailed(
                f"no queue takes {method.exchange}/{method.routing_key}: the recipient has no inbox",
                reason="unroutable",
            )

    def _delivery(self, method: Any, props: Any, body: bytes) -> Delivery:
        tag = method.delivery_tag
        return Delivery(
            body=body,
            routing_key=method.routing_key,
            message_id=props.message_id or "",
            headers=dict(props.headers or {}),
            user_id=props.user_id,
            redelivered=bool(method.redelivered),
            # written by the next pump, a batch's acks as one multiple ack where safe (bus.acks)
            _ack=lambda: self._acks.ack(tag),
            _reject=lambda requeue: self._nack(tag, requeue),
        )

    def _nack(self, tag: int, requeue: bool) -> None:
        self._acks.rejected(tag)
        self._ch.basic_nack(tag, requeue=requeue)

    def _write_acks(self) -> None:
        for tag, multiple in self._acks.frames():
            self._ch._impl.basic_ack(tag, multiple=multiple)  # queued: the pump writes them

    def get(self, queue: str) -> Delivery | None:
        try:
            self._write_acks()  # the last one's ack goes out with this request
            method, props, body = self._ch.basic_get(queue, auto_ack=False)
        except pex.ChannelClosedByBroker as exc:
            raise _refused_queue(f"cannot read {queue}", exc) from exc
        except (pex.AMQPError, OSError) as exc:
            raise broker_unavailable(self.url, exc) from exc
        if method is None:
            return None
        return self._delivery(method, props, body)

    def consume(
        self,
        queues: str | Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 10,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Feed deliveries to ``handler`` one by one; see :meth:`consume_batches`."""
        self.consume_batches(
            queues, _one_by_one(handler), prefetch=prefetch, max_batch=1, idle_timeout=idle_timeout, stop=stop
        )

    def consume_batches(
        self,
        queues: str | Sequence[str],
        handler: BatchHandler,
        *,
        prefetch: int | Sequence[int] = 10,
        max_batch: int = 100,
        share: Sequence[int | None] | None = None,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """Feed deliveries to ``handler`` until ``stop()`` is true or nothing came for ``idle_timeout`` s.

        Each call gets what has arrived, up to ``max_batch``: one delivery when traffic is
        light (no waiting to fill a batch, so no added latency), many under load (so
        per-batch costs such as a database commit are shared).  ``queues`` are in priority
        order: whatever the first one holds comes before anything of the next (how urgent
        documents overtake a backlog without queue priorities).  ``prefetch``: one for all
        queues, or one per queue (a queue of 1 MiB chunks gets a small one).  ``share``: per
        queue, at most this many of its deliveries in one batch (None: no share of its own),
        or as many as the earlier queues put in it, if that is more: a burst in a late queue
        is taken a little at a time, between the batches that whatever arrives meanwhile in
        the earlier queues gets, yet it keeps pace with them when they are busy; and as many
        places as it has deliveries waiting, up to its share, are kept for it, so a backlog
        in the earlier queues never starves it.  ``on_idle``:
        called while nothing has come for ``QUIET_AFTER`` s (work deferred while busy, done
        when quiet); not on the brief gaps between batches of a steady stream.
        """
        names = [queues] if isinstance(queues, str) else list(queues)
        caps = _caps(names, max_batch, share)
        buffers: dict[str, deque[tuple[Any, Any, bytes]]] = {q: deque() for q in names}
        tags: list[str] = []
        prefetches = [prefetch] * len(names) if isinstance(prefetch, int) else list(prefetch)
        try:
            for q, count in zip(names, prefetches, strict=True):
                self._ch.basic_qos(prefetch_count=count)  # per consumer: RabbitMQ applies it to the next one
                tags.append(
                    self._ch.basic_consume(
                        q, on_message_callback=lambda _ch, m, p, b, q=q: buffers[q].append((m, p, b))
                    )
                )
            last = time.monotonic()
            while not (stop is not None and stop()):
                self._fill(buffers, max_batch)
                batch: list[Delivery] = []
                for q, n in _quotas(names, max_batch, caps, {q: len(buffers[q]) for q in names}).items():
                    batch.extend(self._delivery(*buffers[q].popleft()) for _ in range(n))
                if not batch:
                    if on_idle is not None and time.monotonic() - last >= QUIET_AFTER:
                        on_idle()
                    if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                        break
                    self._pump(0.05)
                    continue
                self._handle(handler, batch)
                last = time.monotonic()
            # the acks written, and what pika has read for us but not handed over taken, so it
            # is given back below with the rest rather than rejected by pika's cancel unseen (bus.acks)
            self._pump(0)
            for tag in tags:
                self._ch.basic_cancel(tag)
            for q in names:  # taken from the broker but not handled: give them back
                while buffers[q]:
                    self._nack(buffers[q].popleft()[0].delivery_tag, requeue=True)
        except pex.ChannelClosedByBroker as exc:
            raise _refused_queue(f"cannot consume {', '.join(names)}", exc) from exc
        except (pex.AMQPError, OSError) as exc:
            raise broker_unavailable(self.url, exc) from exc

    def _handle(self, handler: Callable[[list[Delivery]], None], batch: list[Delivery]) -> None:
        """Run ``handler``; an OSError from it is this machine's (a full disk, a missing folder),
        not the broker's, unless the connection died meanwhile: it must not read as an outage."""
        try:
            handler(batch)
        except OSError as exc:
            if self._conn.is_closed:
                raise broker_unavailable(self.url, exc) from exc
            raise DocbusError(
                f"a local file operation failed while handling a delivery: {exc}; it goes back to the broker",
                reason="local-io",
            ) from exc

    def _fill(self, buffers: dict[str, deque[tuple[Any, Any, bytes]]], want: int) -> None:
        """Read what the broker has already sent, up to ``want`` buffered deliveries: one
        read takes only one socket buffer's worth, which would cap batches at a few dozen.

        It reads once before every batch, however many are buffered: with a backlog of one
        queue buffered, what the broker sends meanwhile would otherwise stay unread in pika
        until that backlog drained: an urgent document in an earlier queue, or the next
        deliveries of a queue with a share (the router's statuses), whose share of each batch
        would go empty, its prefetch spent on deliveries already handled."""
        held = -1
        while held < want:
            self._pump(0)
            now = sum(len(b) for b in buffers.values())
            if now == held:
                return
            held = now

    def _pump(self, time_limit: float) -> None:
        """Let pika read and write; any failure of a dead connection is BrokerUnavailable."""
        try:
            self._write_acks()
            self._conn.process_data_events(time_limit=time_limit)
        except (pex.AMQPError, OSError) as exc:
            raise broker_unavailable(self.url, exc) from exc
        except Exception as exc:  # pika raises odd errors (ValueError, AssertionError) on a dying socket
            if self._conn.is_closed:
                raise broker_unavailable(self.url, exc) from exc
            raise

    def close(self) -> None:
        try:
            if self._conn.is_open:
                try:
                    self._write_acks()  # sent ahead of the close
                except (pex.AMQPError, OSError):  # the channel is gone: the broker redelivers those
                    pass
                self._conn.close()
        except (pex.AMQPError, OSError):  # closing a dead connection is not an error
            pass


class MemoryTransport:
    """An in-process broker with the same semantics for fast unit tests.

    Topic, direct and fanout routing, mandatory publishing (unroutable raises), explicit
    acks with requeue, and a quorum queue's delivery limit: a message returned more often
    than ``x-delivery-limit`` goes to the queue's dead-letter exchange, with an ``x-death``
    header as RabbitMQ writes one, so a poison message ends in a unit test as it does on
    the broker.  It is not a stand-in for RabbitMQ in the integration tests.
    """

    def __init__(self) -> None:
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, deque[Delivery]] = {}
        self.bindings: list[tuple[str, str, str]] = []
        self.delivery_limits: dict[str, tuple[int, str]] = {}  # queue -> (limit, dead-letter exchange)

    def apply(self, topology: Topology) -> None:
        for ex in topology.exchanges:
            self.exchanges.setdefault(ex.name, ex.type)
        for q in topology.queues:
            self.queues.setdefault(q.name, deque())
            limit, dead = q.arguments.get("x-delivery-limit"), q.arguments.get("x-dead-letter-exchange")
            if isinstance(limit, int) and isinstance(dead, str):
                self.delivery_limits[q.name] = (limit, dead)
        for b in topology.bindings:
            if (b.exchange, b.queue, b.routing_key) not in self.bindings:
                self.bindings.append((b.exchange, b.queue, b.routing_key))
        for b in topology.retired:
            if (b.exchange, b.queue, b.routing_key) in self.bindings:
                self.bindings.remove((b.exchange, b.queue, b.routing_key))

    def delete(self, topology: Topology) -> None:
        for q in topology.queues:
            self.queues.pop(q.name, None)

    @staticmethod
    def _topic_match(pattern: str, key: str) -> bool:
        """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
        words = [r"[^.]+" if w == "*" else (r".*" if w == "#" else re.escape(w)) for w in pattern.split(".")]
        regex = r"\.".join(words).replace(r".*\.", r"(?:.*\.)?").replace(r"\..*", r"(?:\..*)?")
        return re.fullmatch(regex, key) is not None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str = "",
        headers: dict[str, Any] | None = None,
        user_id: str | None = None,
    ) -> None:
        if exchange == "":  # the default exchange: straight to the queue of that name
            if routing_key not in self.queues:
                raise DeliveryFailed(f"no queue {routing_key}", reason="unroutable")
            self.queues[routing_key].append(
                Delivery(bytes(body), routing_key, message_id, dict(headers or {}), user_id)
            )
            return
        kind = self.exchanges.get(exchange)
        if kind is None:
            raise DeliveryFailed(f"no exchange {exchange}", reason="refused-by-broker")
        targets = [
            q
            for ex, q, key in self.bindings
            if ex == exchange
            and (
                kind == "fanout"
                or (kind == "direct" and key == routing_key)
                or (kind == "topic" and self._topic_match(key, routing_key))
            )
        ]
        if not targets:
            raise DeliveryFailed(
                f"no queue takes {exchange}/{routing_key}: the recipient has no inbox", reason="unroutable"
            )
        for q in dict.fromkeys(targets):
            self.queues[q].append(Delivery(bytes(body), routing_key, message_id, dict(headers or {}), user_id))

    def get(self, queue: str) -> Delivery | None:
        q = self.queues[queue]
        if not q:
            return None
        d = q.popleft()
        d._ack = lambda: None

        def reject(requeue: bool, d: Delivery = d) -> None:
            if not requeue:
                return
            returned = int(d.headers.get("x-delivery-count", 0)) + 1
            limit, dead = self.delivery_limits.get(queue, (None, ""))
            if limit is not None and returned > limit:
                death = {"queue": queue, "reason": "delivery_limit", "count": 1}
                headers = {k: v for k, v in d.headers.items() if k != "x-delivery-count"} | {"x-death": [death]}
                self.publish(dead, d.routing_key, d.body, message_id=d.message_id, headers=headers, user_id=d.user_id)
                return
            d.headers["x-delivery-count"] = returned
            d.redelivered = True
            q.appendleft(d)

        d._reject = reject
        return d

    def publish_many(self, items: Iterable[Outgoing], *, window: int | None = None) -> list[DeliveryFailed | None]:
        results: list[DeliveryFailed | None] = []
        for item in items:
            try:
                self.publish(
                    item.exchange,
                    item.routing_key,
                    item.body,
                    message_id=item.message_id,
                    headers=item.headers,
                    user_id=item.user_id,
                )
                results.append(None)
            except DeliveryFailed as exc:
                results.append(exc)
        return results

    def consume(
        self,
        queues: str | Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 10,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.consume_batches(queues, _one_by_one(handler), max_batch=1, stop=stop)

    def consume_batches(
        self,
        queues: str | Sequence[str],
        handler: BatchHandler,
        *,
        prefetch: int | Sequence[int] = 10,
        max_batch: int = 100,
        share: Sequence[int | None] | None = None,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """Until the queues are empty (or ``stop()``): batches of up to ``max_batch``, first
        queues first, at most ``share[i]`` from queue i (as :meth:`AmqpTransport.consume_batches`)."""
        names = [queues] if isinstance(queues, str) else list(queues)
        caps = _caps(names, max_batch, share)
        while not (stop is not None and stop()):
            batch: list[Delivery] = []
            for q, n in _quotas(names, max_batch, caps, {q: len(self.queues[q]) for q in names}).items():
                batch.extend(d for _ in range(n) if (d := self.get(q)) is not None)
            if not batch:
                if on_idle is not None:
                    on_idle()
                return
            handler(batch)

    def close(self) -> None:
        pass
