"""The whole path through the real RabbitMQ and a real SQLite archive file."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import pytest

from adapters import Adapter
from bus.archive import Message
from bus.demo import RouterThread
from bus.edxml import Attachment
from bus.errors import BrokerUnavailable, DocbusError, PolicyRefusal
from bus.topology import Binding, Names, Queue, Topology, core
from bus.transport import AmqpTransport
from tests.helpers import connect_as, receive_until, router_batches, signed_edoc, user_of

pytestmark = pytest.mark.broker
PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


def test_document_with_attachment_travels_and_statuses_come_back(broker_province, tmp_path) -> None:
    p = broker_province
    pdf = tmp_path / "Công văn số 125.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n")
    with (
        RouterThread(p.settings, p.archive, p.hub) as rt,
        Adapter(p.settings, DEPT) as dept,
        Adapter(p.settings, PC) as pc,
    ):
        sent = dept.send([PC], subject="Công văn V/v kết nối", number="125", notation="SNV-VP", files=[pdf])
        assert sent.published
        got = receive_until(pc, 1)
        assert [(g.kind, g.document_id) for g in got] == [("edoc", sent.document_id)]
        doc = pc.document(sent.document_id)
        assert doc.attachments[0].name == "Công văn số 125.pdf"
        assert hashlib.sha256(doc.attachments[0].data).hexdigest() == hashlib.sha256(pdf.read_bytes()).hexdigest()
        saved = pc.save_attachments(sent.document_id, tmp_path / "out")
        assert saved[0].read_bytes() == pdf.read_bytes()
        pc.send_status(sent.document_id, DEPT, "03", "Đã vào sổ")
        statuses = receive_until(dept, 2)
        deadline = time.monotonic() + 10  # the data centre's sealed receipt, through DEPT's own user
        while dept.sent()[0].accepted_at is None and time.monotonic() < deadline:
            dept.receive(idle_timeout=0.3)  # the router sends its receipts every second
        assert rt.error is None
        [mine] = dept.sent()
        assert mine.accepted_at is not None and mine.answers == {PC: ("03", mine.answers[PC][1])}
    assert [(s.status_code, s.sender) for s in statuses] == [("01", PC), ("03", PC)]
    trace = p.archive.trace(sent.document_id)
    recipient = trace["submissions"][0]["recipients"][0]
    assert recipient["organ_id"] == PC and recipient["delivered_at"]
    assert [s["code"] for s in recipient["statuses"]] == ["01", "03"]


def test_large_file_travels_in_chunks_through_the_broker(broker_province, tmp_path) -> None:
    """A 6 MiB scan (over the 4 MiB inline limit) goes as chunks, sent with the agency's own broker user."""
    import os

    from bus.archive import AttachmentRecord

    p = broker_province
    scan = tmp_path / "ho-so-dat-dai.pdf"
    scan.write_bytes(b"%PDF-1.4\n" + os.urandom(6 * 1024 * 1024))
    digest = hashlib.sha256(scan.read_bytes()).hexdigest()
    with (
        RouterThread(p.settings, p.archive, p.hub) as rt,
        Adapter(p.settings, DEPT) as dept,
        Adapter(p.settings, PC, auto_arrived=False) as pc,
    ):
        sent = dept.send([PC], subject="Hồ sơ đất đai", number="126", notation="SNV-VP", files=[scan])
        assert sent.published
        got = receive_until(pc, 1)
        assert [g.document_id for g in got] == [sent.document_id]
        stored = pc.document(sent.document_id).attachments[0].path
        assert stored is not None and hashlib.sha256(stored.read_bytes()).hexdigest() == digest
        assert rt.error is None
    record = Message.get(Message.document_id == sent.document_id)
    assert record.size < 20_000  # the archive keeps the small envelope ...
    assert AttachmentRecord.get(AttachmentRecord.message == record).sha256 == digest  # ... and the file beside it


def test_distribution_to_many_agencies(broker_province, tmp_path) -> None:
    p = broker_province
    f = tmp_path / "qd.pdf"
    f.write_bytes(b"%PDF-1.4 decision")
    with RouterThread(p.settings, p.archive, p.hub), Adapter(p.settings, PC) as pc:
        sent = pc.send([DEPT, FIN], subject="Quyết định sao lục", number="7", notation="QĐ-UBND", files=[f])
        for code in (DEPT, FIN):
            with Adapter(p.settings, code) as a:
                assert [g.document_id for g in receive_until(a, 1)] == [sent.document_id]
        assert {(s.sender, s.status_code) for s in receive_until(pc, 2)} == {(DEPT, "01"), (FIN, "01")}


def test_statuses_keep_pace_with_waiting_documents_through_the_broker(broker_province, tmp_path) -> None:
    """With documents and 01s both waiting, every batch the router takes also takes its share
    of statuses: a batch's statuses stay unacked until the next batch's commit, and with too
    small a status prefetch every other batch found none; with the documents buffered, none
    came at all until they drained (docs/performance-history.md, steps 14 and 15)."""
    from bus.router import STATUS_SHARE

    p, answered, waiting = broker_province, 40, 200
    f = tmp_path / "cv.pdf"
    f.write_bytes(b"%PDF-1.4 cong van")
    with Adapter(p.settings, DEPT) as dept, Adapter(p.settings, PC) as pc:
        with RouterThread(p.settings, p.archive, p.hub) as rt:
            for i in range(answered):
                dept.send([PC], subject=f"Công văn {i}", number=str(i), notation="SNV-VP", files=[f])
            deadline = time.monotonic() + 30
            while (rt.router is None or rt.router.processed < answered) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert rt.error is None
        assert len(receive_until(pc, answered)) == answered  # its 01s wait: no router is running
        for i in range(waiting):
            dept.send([PC], subject=f"Công văn {i}", number=str(answered + i), notation="SNV-VP", files=[f])

    batches = [
        (len(keys) - (n := sum(k.startswith("status.") for k in keys)), n) for keys in router_batches(p, max_batch=20)
    ]
    assert sum(d for d, _ in batches) == waiting and sum(s for _, s in batches) == answered
    taken = batches[0][1]  # the first batch may come before the statuses reached the router
    for documents, statuses in batches[1:]:
        if documents:
            assert statuses == min(STATUS_SHARE, answered - taken), str(batches)
        taken += statuses


def test_refused_document_is_quarantined_answered_and_not_delivered(broker_province) -> None:
    p = broker_province
    with RouterThread(p.settings, p.archive, p.hub), Adapter(p.settings, DEPT) as dept, Adapter(p.settings, PC) as pc:
        sent = dept.send([PC], subject="Không có tệp", number="9", notation="SNV-VP")  # no electronic file
        answers = receive_until(dept, 1)
        assert pc.receive(idle_timeout=0.5) == []
    assert [(a.status_code, a.sender) for a in answers] == [("02", p.settings.hub_organ_id)]
    assert "[no-electronic-file]" in answers[0].subject
    rec = Message.get((Message.document_id == sent.document_id) & (Message.kind == "edoc"))
    assert rec.state == "quarantined" and rec.reason == "no-electronic-file"


def test_a_secret_document_never_leaves_the_agency_and_the_router_refuses_one_sent_anyway(broker_province) -> None:
    p = broker_province
    pdf = Attachment.from_bytes("mat.pdf", b"%PDF-1.4", "application/pdf")
    with Adapter(p.settings, DEPT) as dept:
        with pytest.raises(PolicyRefusal, match="not sent: document is marked 'Mật'"):
            dept.send([PC], subject="Văn bản mật", number="9", notation="SNV-VP", files=[pdf], security_level="Mật")
        assert dept.store.Outbox.select().count() == 0  # never signed, never published
    # another implementation's adapter may send one anyway: the router refuses it
    unchecked = signed_edoc(p.settings, DEPT, [PC], subject="Văn bản mật", number="10", security_level="Mật")
    raw = connect_as(p, DEPT)
    try:
        raw.publish(f"{p.settings.namespace}.submit", f"edoc.{DEPT}", unchecked, user_id=user_of(p, DEPT))
    finally:
        raw.close()
    with RouterThread(p.settings, p.archive, p.hub), Adapter(p.settings, DEPT) as dept, Adapter(p.settings, PC) as pc:
        answers = receive_until(dept, 1)
        assert pc.receive(idle_timeout=0.5) == []
    assert [(a.status_code, a.sender) for a in answers] == [("02", p.settings.hub_organ_id)]
    assert "[secret-document]" in answers[0].subject


def test_garbage_on_the_bus_does_not_stop_the_router(broker_province, tmp_path) -> None:
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    raw = AmqpTransport(p.settings.amqp_url)
    try:
        raw.publish(
            f"{p.settings.namespace}.submit",
            f"edoc.{DEPT}",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
            user_id="guest",
        )
        raw.publish(f"{p.settings.namespace}.submit", f"edoc.{DEPT}", b"<x>\xff\xfe</x>", user_id="guest")
    finally:
        raw.close()
    with (
        RouterThread(p.settings, p.archive, p.hub) as rt,
        Adapter(p.settings, DEPT) as dept,
        Adapter(p.settings, PC) as pc,
    ):
        refusals = receive_until(dept, 2)
        sent = dept.send([PC], subject="Sau rác", number="10", notation="SNV-VP", files=[f])
        assert [g.document_id for g in receive_until(pc, 1)] == [sent.document_id]
        assert rt.error is None
    assert sorted(r.subject.split("]")[0] + "]" for r in refusals) == ["[bad-encoding]", "[dtd-forbidden]"]


def test_broker_user_cannot_forge_user_id(broker_province) -> None:
    """RabbitMQ itself refuses a user_id that is not the connection's user."""
    p = broker_province
    t = AmqpTransport(p.settings.amqp_url)
    try:
        with pytest.raises(DocbusError):
            t.publish(f"{p.settings.namespace}.submit", f"edoc.{DEPT}", b"<x/>", user_id=DEPT)
    finally:
        t.close()


def test_hostile_corpus_through_the_broker(broker_province) -> None:
    """Every hostile case published as agency PC: 02 with its reason, quarantined, never delivered."""
    import datetime as dt
    import json

    from bus import compose, province
    from bus.brokeradmin import agency_url
    from signing.identity import Identity
    from tests.helpers import edoc, signed_edoc
    from tests.hostile import hostile_corpus

    p = broker_province
    old, _ = province.rotate(p.settings, p.archive, PC, dt.timedelta(days=7))
    home = p.settings.agency_home(PC)
    revoked = compose.sign(
        edoc(PC, [DEPT]),
        Identity(
            PC, "x", (home / f"key-{old.serial}.pem").read_bytes(), (home / f"cert-{old.serial}.pem").read_bytes()
        ),
    )
    province.revoke(p.settings, p.archive, old.serial, "lộ khóa", None)
    corpus = hostile_corpus(p.settings, revoked_cert=revoked)
    creds = json.loads((home / "broker.json").read_text())
    as_pc = AmqpTransport(agency_url(p.settings.amqp_url, creds["user"], creds["password"]))
    try:
        for case in corpus:
            as_pc.publish(f"{p.settings.namespace}.submit", f"edoc.{PC}", case.data, user_id=creds["user"])
        as_pc.publish(
            f"{p.settings.namespace}.submit",
            f"edoc.{PC}",
            signed_edoc(p.settings, PC, [DEPT], number="500"),
            user_id=creds["user"],
        )
    finally:
        as_pc.close()
    with (
        RouterThread(p.settings, p.archive, p.hub) as rt,
        Adapter(p.settings, PC) as pc,
        Adapter(p.settings, DEPT) as dept,
    ):
        answers = receive_until(pc, len(corpus), timeout=60)
        delivered = receive_until(dept, 1)
        assert rt.error is None
    reasons = sorted(a.subject.split("]")[0][1:] for a in answers if a.status_code == "02")
    assert reasons == sorted(c.reason for c in corpus)
    assert [d.document_id.endswith("500/SNV-VP") for d in delivered] == [True]
    assert Message.select().where(Message.state == "quarantined").count() == len(corpus)


def test_applying_the_topology_moves_statuses_off_the_documents_queue(broker_province) -> None:
    """A broker set up before statuses had their own queue still binds status.# to the
    documents' queue; applying the topology again binds the new queue, then retires the old."""
    p = broker_province
    names = Names(p.settings.namespace)
    t = p.transport
    old = Binding(names.submit, names.router_queue, "status.#")
    t.apply(Topology(bindings=(old,)))  # as the earlier version left it
    t.apply(core(names))
    t.apply(core(names))  # again: retiring a binding that is gone is no error
    t.publish(names.submit, f"status.{PC}", b"<status/>", user_id="guest")
    t.publish(names.submit, f"edoc.{PC}", b"<edoc/>", user_id="guest")
    status, edoc = t.get(names.router_status), t.get(names.router_queue)
    assert status is not None and status.body == b"<status/>"
    assert edoc is not None and edoc.body == b"<edoc/>"
    assert t.get(names.router_queue) is None and t.get(names.router_status) is None
    status.ack()
    edoc.ack()


def quorum_queues(*names: str) -> Topology:
    """The tests' own queues, quorum like the bus's."""
    return Topology(queues=tuple(Queue(n, {"x-queue-type": "quorum"}) for n in names))


@contextlib.contextmanager
def one_message_queue(broker_url: str, q: str) -> Iterator[tuple[AmqpTransport, str]]:
    """A quorum queue ``q`` holding one message ``x``, and a transport on it; however the block
    ends, that message must be back on the queue afterwards (nothing lost), then the queue goes."""
    queues = quorum_queues(q)
    t = AmqpTransport(broker_url)
    try:
        t.apply(queues)
        t.publish("", q, b"x")
        yield t, q
    finally:
        t.close()
        cleanup = AmqpTransport(broker_url)
        again = cleanup.get(q)
        assert again is not None and again.body == b"x"
        cleanup.delete(queues)
        cleanup.close()


def test_a_batch_is_acked_in_one_frame_and_a_held_delivery_is_not_acked(broker_url, namespace) -> None:
    """Acks of a batch go as one multiple ack where every earlier delivery is settled, and
    never cover one the consumer held back: it is still on the queue after the channel closes."""
    a, b = f"{namespace}.acks.a", f"{namespace}.acks.b"
    queues = quorum_queues(a, b)
    t = AmqpTransport(broker_url)
    again: AmqpTransport | None = None
    try:
        t.apply(queues)
        for i in range(6):
            t.publish("", a, b"a%d" % i)
        t.publish("", b, b"b0")
        sent: list[tuple[int, bool]] = []
        real_ack = t._ch._impl.basic_ack
        t._ch._impl.basic_ack = lambda tag, multiple=False: (sent.append((tag, multiple)), real_ack(tag, multiple))
        seen: list[bytes] = []

        def handle(batch) -> None:
            for d in batch:
                seen.append(d.body)
                if d.body not in (b"a2", b"b0"):  # a2 held back; b0 (the other queue) never acked
                    d.ack()

        t.consume_batches([a, b], handle, prefetch=10, max_batch=10, idle_timeout=0.5)
        t.close()  # what was not acked goes back to its queue
        assert sorted(seen) == [b"a0", b"a1", b"a2", b"a3", b"a4", b"a5", b"b0"]
        assert sent[0][1] is True and len(sent) < 5  # a0 and a1 in one frame, not five single acks
        again = AmqpTransport(broker_url)
        left = [again.get(a), again.get(a), again.get(b)]
        assert [d.body if d else None for d in left] == [b"a2", None, b"b0"]
    finally:
        t.close()
        cleanup = again or AmqpTransport(broker_url)
        cleanup.delete(queues)
        cleanup.close()


def test_close_after_the_broker_closed_the_channel_still_closes_the_connection(broker_url, namespace) -> None:
    """An ack still waiting to be written cannot go out on a channel the broker closed; closing
    the transport must still close its connection (and the broker redelivers the message)."""
    with one_message_queue(broker_url, f"{namespace}.acks.gone") as (t, q):
        d = t.get(q)
        assert d is not None
        d.ack()  # waits for the next pump or the close
        with pytest.raises(DocbusError):  # a declaration that contradicts the queue: the broker closes the channel
            t.apply(Topology(queues=(Queue(q, {"x-queue-type": "classic"}),)))
        t.close()
        assert t._conn.is_closed


def test_an_ack_goes_out_with_the_next_request_not_at_close(broker_url, namespace) -> None:
    """get, ack, get (how the dead queue is collected): a process that dies after the second
    get must not see the first message again."""
    import socket

    q = f"{namespace}.acks.get"
    queues = quorum_queues(q)
    t = AmqpTransport(broker_url)
    try:
        t.apply(queues)
        t.publish("", q, b"first")
        t.publish("", q, b"second")
        first = t.get(q)
        assert first is not None and first.body == b"first"
        first.ack()
        second = t.get(q)
        assert second is not None and second.body == b"second"
        t._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)  # the process dies here
        cleanup = AmqpTransport(broker_url)
        try:
            back = []
            while (d := cleanup.get(q)) is not None:
                back.append(d.body)
                d.ack()
            assert back == [b"second"]
        finally:
            cleanup.delete(queues)
            cleanup.close()
    finally:
        t.close()


def test_reading_a_queue_that_was_never_declared_says_the_bus_is_not_set_up(broker_url, namespace) -> None:
    """`docbus dead list` before `docbus init`: not found (exit 3) with what to run, not a refusal."""
    from bus.errors import NotFound

    t = AmqpTransport(broker_url)
    try:
        with pytest.raises(NotFound, match="docbus init"):
            t.get(f"{namespace}.never.declared")
    finally:
        t.close()


def test_a_local_file_error_in_a_handler_is_not_called_a_broker_outage(broker_url, namespace) -> None:
    """A full disk while handling a delivery: its own error, and the delivery goes back to the queue."""

    def disk_full(batch) -> None:
        raise OSError(28, "No space left on device")

    with one_message_queue(broker_url, f"{namespace}.local.io") as (t, q):
        with pytest.raises(DocbusError) as info:
            t.consume_batches(q, disk_full, idle_timeout=2)
        assert info.value.reason == "local-io" and "No space left" in info.value.message
        assert not isinstance(info.value, BrokerUnavailable)
