"""The real transport without a broker: how it writes frames, and what it says when it cannot connect."""

from __future__ import annotations

import socket
from collections import deque

import pytest
from pika.adapters.utils import io_services_utils as nbio

from bus.errors import BrokerUnavailable
from bus.transport import COALESCE_BYTES, AmqpTransport, _produce_coalesced


class FakeTransport:
    """The state pika's transport keeps for ``_produce``, with a socket that takes ``accept`` bytes a call."""

    def __init__(self, frames: list[bytes], accept: int | None = None) -> None:
        self._tx_buffers = deque(frames)
        self._tx_buffered_byte_count = sum(map(len, frames))
        self._sock = object()
        self.accept = accept
        self.sends: list[bytes] = []

    def _sigint_safe_send(self, _sock: object, data: bytes) -> int:
        taken = data if self.accept is None else data[: self.accept]
        self.sends.append(bytes(taken))
        return len(taken)


def test_queued_frames_go_out_in_one_write_in_order() -> None:
    frames = [b"method", b"header", b"body" * 1000, b"ack1", b"ack2"]
    t = FakeTransport(frames)
    _produce_coalesced(t)
    assert t.sends == [b"".join(frames)]
    assert not t._tx_buffers and t._tx_buffered_byte_count == 0


def test_large_frames_are_not_copied_into_one_huge_write() -> None:
    chunk = b"x" * COALESCE_BYTES  # a 1 MiB file chunk is cut into frames of this order
    t = FakeTransport([b"method", b"header", chunk, b"next"])
    _produce_coalesced(t)
    assert t.sends == [b"methodheader", chunk, b"next"]
    assert t._tx_buffered_byte_count == 0


def test_partial_sends_keep_every_byte_and_the_count() -> None:
    frames = [b"abc", b"defgh", b"ij"]
    t = FakeTransport(frames, accept=4)
    _produce_coalesced(t)
    assert b"".join(t.sends) == b"abcdefghij"
    assert t.sends[0] == b"abcd" and t._tx_buffered_byte_count == 0


def test_plain_tcp_connections_use_it() -> None:
    assert nbio._AsyncPlaintextTransport._produce is _produce_coalesced
    assert nbio._AsyncSSLTransport._produce is not _produce_coalesced  # TLS keeps pika's own


def test_a_broker_that_never_answers_the_handshake_is_one_clear_error() -> None:
    """RabbitMQ can take TCP connections and never answer (seen after heavy quorum-queue churn)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with pytest.raises(BrokerUnavailable, match="did not answer the AMQP handshake") as caught:
            AmqpTransport(f"amqp://guest:secret@127.0.0.1:{port}/%2F", connect_timeout=1.0)
    assert "secret" not in caught.value.message


def test_nothing_listening_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(BrokerUnavailable, match="not reachable"):
            AmqpTransport(f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=1.0)


class _SetupOnly:
    """Stands in for the blocking connection the relay fills and empties its queues with."""

    def __init__(self, *_args: object) -> None:
        pass

    def channel(self) -> _SetupOnly:
        return self

    def __getattr__(self, _name: str) -> object:
        return lambda *_a, **_k: None


def test_the_benchmarks_relay_gives_up_on_a_broker_that_never_answers(monkeypatch) -> None:
    import threading

    from benchmarks import bus_bench

    monkeypatch.setattr(bus_bench.pika, "BlockingConnection", _SetupOnly)
    outcome: list[BaseException | dict] = []

    def relay(port: int) -> None:
        try:
            url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
            outcome.append(bus_bench.raw_relay(url, [b"x"], "t", connect_timeout=1.0))
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        worker = threading.Thread(target=relay, args=(silent.getsockname()[1],), daemon=True)
        worker.start()
        worker.join(30)
    assert not worker.is_alive(), "the relay still waits for a broker that never answered"
    assert len(outcome) == 1 and isinstance(outcome[0], BrokerUnavailable)
