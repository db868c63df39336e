"""Transports: the real one over RabbitMQ (pika) and an in-memory one for fast unit tests.

Both offer the same small surface: ``apply`` a topology, ``publish`` with a confirm (it
returns only once the broker has taken responsibility, or raises), ``get`` one delivery,
and ``consume`` deliveries into a handler that acks or rejects each one explicitly.
Callers never see pika: every broker failure becomes :class:`BrokerUnavailable` or
:class:`DeliveryFailed`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions as pex

from bus.errors import BrokerUnavailable, DocbusError
from bus.topology import Topology

log = logging.getLogger(__name__)


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
    def get(self, queue: str) -> Delivery | None: ...
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


def redact(url: str) -> str:
    """The URL without its password, for messages people read."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _describe(exc: BaseException) -> str:
    """The innermost cause pika wraps (e.g. 'Connection refused'), not its wrapper's name."""
    for _ in range(5):
        inner = getattr(exc, "exception", None) or (exc.args[0] if exc.args else None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
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

    def __init__(self, url: str, *, heartbeat: int = 30, blocked_timeout: float = 60.0) -> None:
        self.url = url
        params = pika.URLParameters(url)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = blocked_timeout
        params.connection_attempts = 1
        params.socket_timeout = 5
        self._params = params
        try:
            self._conn = pika.BlockingConnection(params)
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()
        except pex.ProbableAccessDeniedError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ at {redact(url)} refused this user access to the vhost", reason="access-refused"
            ) from exc
        except pex.ProbableAuthenticationError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ at {redact(url)} refused the credentials", reason="access-refused"
            ) from exc
        except (pex.AMQPConnectionError, OSError) as exc:
            raise _unavailable(url, exc) from exc
        except pex.AMQPError as exc:
            raise _unavailable(url, exc) from exc

    # -- topology
    def apply(self, topology: Topology) -> None:
        try:
            for ex in topology.exchanges:
                self._ch.exchange_declare(ex.name, exchange_type=ex.type, durable=True)
            for q in topology.queues:
                self._ch.queue_declare(q.name, durable=True, arguments=dict(q.arguments))
            for b in topology.bindings:
                self._ch.queue_bind(b.queue, b.exchange, routing_key=b.routing_key)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"the broker refused the topology: {exc.reply_text}", reason="topology") from exc
        except pex.AMQPError as exc:
            raise _unavailable(self.url, exc) from exc

    def delete(self, topology: Topology) -> None:
        try:
            for q in topology.queues:
                self._ch.queue_delete(q.name)
            for ex in topology.exchanges:
                self._ch.exchange_delete(ex.name)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"the broker refused to delete: {exc.reply_text}", reason="access-refused") from exc
        except pex.AMQPError as exc:
            raise _unavailable(self.url, exc) from exc

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
            raise _unavailable(self.url, exc) from exc

    def _delivery(self, method: Any, props: Any, body: bytes) -> Delivery:
        tag = method.delivery_tag
        return Delivery(
            body=body,
            routing_key=method.routing_key,
            message_id=props.message_id or "",
            headers=dict(props.headers or {}),
            user_id=props.user_id,
            redelivered=bool(method.redelivered),
            _ack=lambda: self._ch.basic_ack(tag),
            _reject=lambda requeue: self._ch.basic_nack(tag, requeue=requeue),
        )

    def get(self, queue: str) -> Delivery | None:
        try:
            method, props, body = self._ch.basic_get(queue, auto_ack=False)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"cannot read {queue}: {exc.reply_text}", reason="access-refused") from exc
        except (pex.AMQPError, OSError) as exc:
            raise _unavailable(self.url, exc) from exc
        if method is None:
            return None
        return self._delivery(method, props, body)

    def consume(
        self,
        queues: str | Sequence[str],
        handler: Callable[[Delivery], None],
        *,
        prefetch: int = 10,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Feed deliveries to ``handler`` until ``stop()`` is true or nothing came for ``idle_timeout`` s.

        ``queues`` are in priority order: whatever the first one holds is handled before
        anything of the next (how urgent documents overtake a backlog without queue priorities).
        """
        names = [queues] if isinstance(queues, str) else list(queues)
        buffers: dict[str, deque[tuple[Any, Any, bytes]]] = {q: deque() for q in names}
        tags: list[str] = []
        try:
            self._ch.basic_qos(prefetch_count=prefetch)
            for q in names:
                tags.append(
                    self._ch.basic_consume(
                        q, on_message_callback=lambda _ch, m, p, b, q=q: buffers[q].append((m, p, b))
                    )
                )
            last = time.monotonic()
            while not (stop is not None and stop()):
                self._pump(0)
                item = next((buffers[q].popleft() for q in names if buffers[q]), None)
                if item is None:
                    if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                        break
                    self._pump(0.05)
                    continue
                handler(self._delivery(*item))
                last = time.monotonic()
            for tag in tags:
                self._ch.basic_cancel(tag)
            for q in names:  # taken from the broker but not handled: give them back
                while buffers[q]:
                    self._ch.basic_nack(buffers[q].popleft()[0].delivery_tag, requeue=True)
        except pex.ChannelClosedByBroker as exc:
            raise DocbusError(f"cannot consume {', '.join(names)}: {exc.reply_text}", reason="access-refused") from exc
        except (pex.AMQPError, OSError) as exc:
            raise _unavailable(self.url, exc) from exc

    def _pump(self, time_limit: float) -> None:
        """Let pika read and write; any failure of a dead connection is BrokerUnavailable."""
        try:
            self._conn.process_data_events(time_limit=time_limit)
        except (pex.AMQPError, OSError) as exc:
            raise _unavailable(self.url, exc) from exc
        except Exception as exc:  # pika raises odd errors (ValueError, AssertionError) on a dying socket
            if self._conn.is_closed:
                raise _unavailable(self.url, exc) from exc
            raise

    def close(self) -> None:
        try:
            if self._conn.is_open:
                self._conn.close()
        except (pex.AMQPError, OSError):  # closing a dead connection is not an error
            pass


class MemoryTransport:
    """An in-process broker with the same semantics for fast unit tests.

    Topic, direct and fanout routing, mandatory publishing (unroutable raises), explicit
    acks with requeue.  It is not a stand-in for RabbitMQ in the integration tests.
    """

    def __init__(self) -> None:
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, deque[Delivery]] = {}
        self.bindings: list[tuple[str, str, str]] = []

    def apply(self, topology: Topology) -> None:
        for ex in topology.exchanges:
            self.exchanges.setdefault(ex.name, ex.type)
        for q in topology.queues:
            self.queues.setdefault(q.name, deque())
        for b in topology.bindings:
            if (b.exchange, b.queue, b.routing_key) not in self.bindings:
                self.bindings.append((b.exchange, b.queue, b.routing_key))

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
            if requeue:
                d.redelivered = True
                q.appendleft(d)

        d._reject = reject
        return d

    def consume(
        self,
        queues: str | Sequence[str],
        handler: Callable[[Delivery], None],
        *,
        prefetch: int = 10,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        names = [queues] if isinstance(queues, str) else list(queues)
        while not (stop is not None and stop()):
            d = next((d for d in (self.get(q) for q in names) if d is not None), None)
            if d is None:
                return
            handler(d)

    def close(self) -> None:
        pass
