"""The router's decisions, on the in-memory transport (the same code runs on RabbitMQ)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from peewee import OperationalError

from adapters import Adapter
from bus.archive import Message, Recipient, StatusEvent
from bus.audit import verify_archive
from bus.policy import fold
from bus.router import STATUS_SHARE, Router, load_trust
from bus.topology import DELIVERY_LIMIT, Names, Queue, Topology
from bus.transport import Delivery, MemoryTransport
from tests.helpers import inbox_mail, signed_edoc

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


@pytest.fixture
def router(memory_province) -> Router:
    p = memory_province
    return Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)


def submit(p, data: bytes, sender: str, kind: str = "edoc") -> None:
    p.transport.publish(Names(p.settings.namespace).submit, f"{kind}.{sender}", data, user_id="guest")


def inbox(p, organ: str) -> list[bytes]:
    return [d.body for d in inbox_mail(p, organ)]


def test_accepted_edoc_is_archived_and_delivered_to_every_recipient(memory_province, router) -> None:
    p = memory_province
    data = signed_edoc(p.settings, PC, [DEPT, FIN], subject="Quyết định ban hành Đề án 112")
    out = router.process(data, routing_key=f"edoc.{PC}")
    assert out.state == "accepted"
    rec = Message.get(Message.digest == out.digest)
    assert rec.subject == "Quyết định ban hành Đề án 112" and rec.state == "accepted"
    assert p.archive.raw(rec) == data  # byte-exact
    assert {r.organ_id for r in Recipient.select() if r.delivered_at} == {DEPT, FIN}
    assert len(inbox(p, DEPT)) == 1 and len(inbox(p, FIN)) == 1
    assert inbox(p, PC) == []


def test_same_bytes_twice_are_not_delivered_twice(memory_province, router) -> None:
    p = memory_province
    data = signed_edoc(p.settings, PC, [DEPT])
    router.process(data, routing_key=f"edoc.{PC}")
    again = router.process(data, routing_key=f"edoc.{PC}")
    assert again.state == "duplicate"
    assert len(inbox(p, DEPT)) == 1
    assert Message.select().count() == 1


def test_redelivery_finishes_what_a_dead_router_left_undone(memory_province, router) -> None:
    p = memory_province
    data = signed_edoc(p.settings, PC, [DEPT, FIN])
    first = router.process(data, routing_key=f"edoc.{PC}")
    # as if the router died after archiving and delivering to DEPT only
    Recipient.update(delivered_at=None).where(Recipient.organ_id == FIN).execute()
    p.transport.queues[Names(p.settings.namespace).inbox(FIN)].clear()
    router.process(data, routing_key=f"edoc.{PC}")
    assert len(inbox(p, FIN)) == 1 and len(inbox(p, DEPT)) == 1
    assert Recipient.select().where(Recipient.delivered_at.is_null()).count() == 0
    assert first.state == "accepted"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"files": False}, "no-electronic-file"),
        ({"security_level": "Tối mật"}, "secret-document"),
        ({"recipients": [DEPT, "000.00.77.H61"]}, "unknown-recipient"),
        ({"recipients": [DEPT, DEPT]}, "duplicate-recipient"),
        ({"signer": FIN}, "sender-mismatch"),
    ],
)
def test_refused_documents_are_quarantined_answered_02_and_never_delivered(memory_province, router, kwargs, reason):
    p = memory_province
    recipients = kwargs.pop("recipients", [DEPT])
    data = signed_edoc(p.settings, PC, recipients, **kwargs)
    out = router.process(data, routing_key=f"edoc.{PC}")
    assert (out.state, out.reason) == ("quarantined", reason)
    rec = Message.get(Message.digest == out.digest)
    assert rec.state == "quarantined" and rec.reason == reason and p.archive.raw(rec) == data
    # a verified document refused by policy keeps its header for the archive's readers, outside
    # the full-text index; an envelope whose signer is not its sender keeps nothing it claims
    header = (rec.subject, rec.code_number, rec.code_notation, rec.search_text)
    assert header == (("", "", "", "") if reason == "sender-mismatch" else ("Công văn V/v kết nối", "12", "SNV-VP", ""))
    assert verify_archive(router.gate.trust).ok  # the hash chain covers the header kept
    assert inbox(p, DEPT) == []
    answers = inbox(p, PC)
    assert len(answers) == 1 and b"<edXML:StatusCode>02</edXML:StatusCode>" in answers[0]
    assert f"[{reason}]".encode() in answers[0]
    with Adapter(p.settings, PC, transport=p.transport) as sender:
        got = sender.receive()
    assert [(i.kind, i.status_code, i.sender) for i in got] == [("status", "02", p.settings.hub_organ_id)]


def test_urgent_or_paper_only_documents_may_travel_without_a_file(memory_province, router) -> None:
    p = memory_province
    assert (
        router.process(signed_edoc(p.settings, PC, [DEPT], files=False, priority=3), routing_key=f"edoc.{PC}").state
        == "accepted"
    )
    paper = signed_edoc(p.settings, PC, [DEPT], files=False, paper_only=True, number="13")
    assert router.process(paper, routing_key=f"edoc.{PC}").state == "accepted"


def test_routing_key_of_another_agency_is_refused(memory_province, router) -> None:
    p = memory_province
    out = router.process(signed_edoc(p.settings, PC, [DEPT]), routing_key=f"edoc.{FIN}")
    assert (out.state, out.reason) == ("quarantined", "sender-mismatch")


def test_garbage_is_quarantined_and_the_router_goes_on(memory_province, router) -> None:
    p = memory_province
    for junk, reason in [
        (b"not xml at all", "malformed"),
        (b"<html/>", "not-edxml"),
        (b"<!DOCTYPE x []><x/>", "dtd-forbidden"),
    ]:
        out = router.process(junk, routing_key=f"edoc.{DEPT}")
        assert (out.state, out.reason) == ("quarantined", reason)
    assert router.process(signed_edoc(p.settings, PC, [DEPT]), routing_key=f"edoc.{PC}").state == "accepted"


def test_status_goes_back_to_the_sender_and_into_the_history(memory_province, router) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        got = dept.receive()  # verifies, stores, answers 01
        assert [i.document_id for i in got] == [sent.document_id]
        dept.send_status(sent.document_id, PC, "03")
        router.run()
        statuses = pc.receive()
    assert [(s.status_code, s.sender) for s in statuses] == [("01", DEPT), ("03", DEPT)]
    history = [(e.organ_id, e.status_code) for e in StatusEvent.select().order_by(StatusEvent.id)]
    assert history == [(DEPT, "01"), (DEPT, "03")]
    trace = p.archive.trace(sent.document_id)
    assert [s["code"] for s in trace["submissions"][0]["recipients"][0]["statuses"]] == ["01", "03"]


def test_a_document_not_yet_taken_in_says_how_to_take_it_in(memory_province, router) -> None:
    from bus.errors import NotFound

    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        with pytest.raises(NotFound, match=f"docbus inbox --agency {DEPT}"):
            dept.document(sent.document_id)  # delivered to its inbox queue, not taken in yet
        dept.receive()
        assert dept.document(sent.document_id).subject == "Công văn"


def test_status_from_a_non_recipient_is_refused(memory_province, router) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, FIN, transport=p.transport) as fin:
        sent = pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        fin.send_status(sent.document_id, PC, "03")
        router.run()
        answers = fin.receive()
    assert [(a.status_code, a.sender) for a in answers] == [("02", p.settings.hub_organ_id)]
    assert "not-recipient" in answers[0].subject


def test_recipient_dedupes_a_redelivered_message(memory_province, router) -> None:
    p = memory_province
    router.process(signed_edoc(p.settings, PC, [DEPT]), routing_key=f"edoc.{PC}")
    q = p.transport.queues[Names(p.settings.namespace).inbox(DEPT)]
    q.append(q[0])  # the broker delivers the same message again
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        assert len(dept.receive()) == 1
        assert len(dept.inbox()) == 1


def test_fold_matches_vietnamese_without_diacritics() -> None:
    assert fold("Tối Mật") == "toi mat"
    assert fold("Công văn V/v kết nối") == "cong van v/v ket noi"
    assert fold("Đề án") == "de an"


def _pdf(p):
    path = p.settings.home / "cv.pdf"
    path.write_bytes(b"%PDF-1.4\n%%EOF\n")
    return path


def test_consuming_router_marks_deliveries_with_the_next_batch_and_acks_only_after(
    memory_province, router, monkeypatch
) -> None:
    """The loop's router saves a commit per batch: a batch's confirmed deliveries are marked in
    the next batch's transaction (or when the bus is quiet), and its submissions are acked
    only once their marks are written (with their receipt items: tests/unit/test_receipts.py)."""
    p = memory_province
    acked: list[str] = []

    def delivery(data: bytes, name: str) -> Delivery:
        return Delivery(data, f"edoc.{PC}", user_id="guest", _ack=lambda: acked.append(name))

    first = signed_edoc(p.settings, PC, [DEPT], number="1")
    second = signed_edoc(p.settings, PC, [FIN], number="2")
    router.handle_batch([delivery(first, "first")])
    assert len(inbox(p, DEPT)) == 1  # delivered at once
    assert [r.delivered_at for r in Recipient.select()] == [None]  # not marked yet
    assert acked == []  # so not acked either
    router.handle_batch([delivery(second, "second")])
    marks = {r.organ_id: r.delivered_at for r in Recipient.select()}
    assert marks[DEPT] is not None and marks[FIN] is None
    assert acked == ["first"]
    router.settle()  # what the loop does when nothing comes for a moment
    assert all(r.delivered_at is not None for r in Recipient.select())
    assert acked == ["first", "second"]
    assert router.processed == 2


def test_settle_keeps_marks_and_acks_for_later_when_the_archive_is_busy(memory_province, router, monkeypatch) -> None:
    p = memory_province
    acked: list[bool] = []
    data = signed_edoc(p.settings, PC, [DEPT])
    router.handle_batch([Delivery(data, f"edoc.{PC}", user_id="guest", _ack=lambda: acked.append(True))])
    real = p.archive.record_many

    def busy(*a, **kw):
        raise OperationalError("database is locked")

    monkeypatch.setattr(p.archive, "record_many", busy)
    router.settle()  # no exception out of the consuming loop
    assert acked == [] and [r.delivered_at for r in Recipient.select()] == [None]
    monkeypatch.setattr(p.archive, "record_many", real)
    router.settle()
    assert acked == [True] and Recipient.get().delivered_at is not None


def test_documents_are_not_held_up_by_a_burst_of_statuses(memory_province, router, monkeypatch) -> None:
    """Statuses have their own queue, read after the documents and a few per batch: a burst
    of 01s answered together never makes a document wait for all of them."""
    p = memory_province
    names = Names(p.settings.namespace)
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        for n in range(6):
            pc.send([DEPT], subject=f"Công văn {n}", number=str(n), notation="UBND-VP", files=[_pdf(p)])
        router.run()
        dept.receive()  # six 01s, published together
        assert len(p.transport.queues[names.router_status]) == 6
        assert not p.transport.queues[names.router_queue]  # statuses never share the documents' queue
        pc.send([DEPT], subject="Công văn mới", number="7", notation="UBND-VP", files=[_pdf(p)])
    batches: list[list[str]] = []
    handle = router.handle_batch
    monkeypatch.setattr(
        router, "handle_batch", lambda ds: (batches.append([d.routing_key[:4] for d in ds]), handle(ds))
    )
    router.run()
    assert batches[0] == ["edoc"] + ["stat"] * STATUS_SHARE  # the new document first, then a few statuses
    assert batches[1] == ["stat"] * (6 - STATUS_SHARE)
    assert StatusEvent.select().count() == 6


def test_a_share_caps_each_queue_in_a_batch_and_must_fit_the_queues() -> None:
    t = MemoryTransport()
    t.apply(Topology(queues=(Queue("a"), Queue("b"))))

    def batches(a: int, b: int, max_batch: int) -> list[list[bytes]]:
        """``a`` deliveries waiting in queue a and ``b`` in b, taken with b's share of 2."""
        for name, count in (("a", a), ("b", b)):
            for i in range(count):
                t.publish("", name, name.encode() + b"%d" % i)
        seen: list[list[bytes]] = []

        def take(batch: list[Delivery]) -> None:
            seen.append([d.body for d in batch])
            for d in batch:
                d.ack()

        t.consume_batches(["a", "b"], take, max_batch=max_batch, share=[None, 2])
        return seen

    assert batches(3, 7, 5) == [[b"a0", b"a1", b"a2", b"b0", b"b1"], [b"b2", b"b3"], [b"b4", b"b5"], [b"b6"]]
    # a backlog in the first queue does not starve the second: its share keeps its places
    assert batches(8, 3, 5) == [[b"a0", b"a1", b"a2", b"b0", b"b1"], [b"a3", b"a4", b"a5", b"a6", b"b2"], [b"a7"]]
    # under load a queue with a share keeps pace with the queues before it: as many as they put in
    seen = batches(6, 9, 20)
    assert [len(batch) for batch in seen] == [12, 2, 1]
    assert seen[0] == [b"a%d" % i for i in range(6)] + [b"b%d" % i for i in range(6)]
    with pytest.raises(ValueError):
        t.consume_batches(["a", "b"], lambda batch: None, share=[2])


def test_inbox_shows_the_newest_of_a_kind_and_says_what_it_left_out(memory_province, router) -> None:
    from click.testing import CliRunner

    from cli import main

    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = [
            pc.send([DEPT], subject=f"Công văn số {n}", number=str(n), notation="UBND-VP", files=[_pdf(p)])
            for n in range(1, 4)
        ]
        router.run()
        dept.receive()
        dept.send_status(sent[0].document_id, PC, "03")
        router.run()
        pc.receive()  # three 01s and a 03
        assert [i.subject for i in pc.inbox("edoc")] == []
        assert [i.status_code for i in pc.inbox("status", last=2)] == ["01", "03"]
        assert [i.subject for i in dept.inbox("edoc", last=2)] == ["Công văn số 2", "Công văn số 3"]
        assert pc.inbox_count("status") == 4
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    res = CliRunner().invoke(main, ["inbox", "--agency", PC, "--no-fetch", "--kind", "status", "--last", "3"], env=env)
    assert res.exit_code == 0 and res.output.count(f" {DEPT} ") == 3
    assert "the newest 3 of 4 shown" in res.output
    everything = CliRunner().invoke(main, ["inbox", "--agency", PC, "--no-fetch", "--json"], env=env)
    assert len(json.loads(everything.output)) == 4  # machines get it all unless they ask for less
    newest = CliRunner().invoke(main, ["inbox", "--agency", PC, "--no-fetch", "--json", "--last", "1"], env=env)
    assert [i["status_code"] for i in json.loads(newest.stdout)] == ["03"]


def test_the_router_says_what_it_did_each_minute_and_in_all(memory_province, router, monkeypatch) -> None:
    import bus.router as router_module

    p = memory_province
    lines: list[str] = []
    router.on_summary = lines.append
    submit(p, signed_edoc(p.settings, PC, [DEPT]), PC)
    submit(p, signed_edoc(p.settings, PC, [DEPT], files=False), PC)  # no electronic file: refused
    router.run()
    assert lines == []  # less than a minute: nothing said yet
    monkeypatch.setattr(router_module, "SUMMARY_SECONDS", 0.0)
    submit(p, signed_edoc(p.settings, PC, [FIN], number="13"), PC)
    router.run()
    assert len(lines) == 1 and lines[0].endswith(": 2 accepted, 1 refused")
    router.summarize()  # at stop: nothing new, nothing said
    assert len(lines) == 1 and router_module.describe_outcomes(router.tally) == "2 accepted, 1 refused"


def _revocation_list(p, organ: str, when: dt.datetime) -> bytes:
    """The CA's revocation list revoking ``organ``'s certificate as of ``when``."""
    from signing import crl
    from signing.ca import CertificateAuthority, load_cert
    from tests.helpers import identity

    serial = load_cert(identity(p.settings, organ).cert_pem).serial_number
    return crl.to_pem(crl.build(CertificateAuthority.load(p.settings.home), [(serial, when)]))


def test_the_recipient_judges_the_signer_as_of_the_data_centres_sealed_relay_time(memory_province, router) -> None:
    """A recipient that was offline while a sender's certificate was revoked still takes in
    what the data centre relayed before the revocation: the sealed TraceHeader says when."""
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.send([DEPT], subject="Công văn", number="6", notation="UBND-VP", files=[_pdf(p)])
    router.run()
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        assert dept.accept_crl(_revocation_list(p, PC, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))) == 1
        [item] = dept.receive()
        assert (item.state, item.reason) == ("handed", None)
        assert dept.document(item.document_id).subject == "Công văn"


def test_a_document_that_no_longer_verifies_at_the_recipient_is_kept_and_answered_02(memory_province, router) -> None:
    """Accepted by the router, but its signer's certificate was revoked before the data centre
    relayed it (a revocation the router had not seen yet): the recipient refuses it."""
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        sent = pc.send([DEPT], subject="Công văn", number="7", notation="UBND-VP", files=[_pdf(p)])
    router.run()
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        dept.accept_crl(_revocation_list(p, PC, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
        [item] = dept.receive()
        assert (item.state, item.reason) == ("invalid", "cert-revoked")  # kept, with its reason
        assert dept.pending() == 0  # the 02 went out with the refusal's transaction
    router.run()
    about = StatusEvent.select().where(StatusEvent.document_id == sent.document_id)
    events = [(e.organ_id, e.status_code) for e in about]
    assert events == [(DEPT, "02")]
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        answers = [a for a in pc.receive() if a.kind == "status"]
    assert [(a.status_code, a.sender) for a in answers] == [("02", DEPT)]
    assert "[cert-revoked]" in answers[0].subject and "not taken in" in answers[0].subject


def test_a_message_that_keeps_failing_is_dead_lettered_after_the_delivery_limit(memory_province, router) -> None:
    """As a quorum queue does on RabbitMQ: the router goes on, the message waits in the dead queue."""
    p = memory_province
    names = Names(p.settings.namespace)
    submit(p, signed_edoc(p.settings, PC, [DEPT]), PC)
    attempts: list[int] = []

    def failing(subs, defer=False):
        attempts.append(len(subs))
        raise RuntimeError("archive disk unplugged")

    router.process_batch = failing  # type: ignore[method-assign]
    router.run()
    assert len(attempts) == DELIVERY_LIMIT + 1
    [dead] = p.transport.queues[names.dead]
    assert dead.headers["x-death"][0] == {"queue": names.router_queue, "reason": "delivery_limit", "count": 1}
    assert not p.transport.queues[names.router_queue]
