"""The data centre's receipt to a sender (bus.receipt), on the in-memory transport."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3

import pytest
from click.testing import CliRunner

import cli
from adapters import Adapter
from adapters.store import open_store
from bus import edxml, receipt
from bus.archive import Message, PendingReceipt
from bus.envelope import HubTrace, check_hub_traces, sender_signature
from bus.router import Router, Submission, load_trust
from bus.topology import Names
from bus.transport import Delivery
from tests.helpers import hub_seal, identity, inbox_mail, receipts_for, signed_edoc

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


@pytest.fixture
def router(memory_province) -> Router:
    p = memory_province
    return Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)


def _pdf(p):
    f = p.settings.home / "cong-van.pdf"
    f.write_bytes("%PDF-1.4 văn bản".encode())
    return f


def test_one_receipt_per_sender_and_batch_with_each_documents_sealed_relay(memory_province, router) -> None:
    p = memory_province
    mine = [signed_edoc(p.settings, PC, [DEPT], number=str(n)) for n in (1, 2, 3)]
    theirs = signed_edoc(p.settings, FIN, [DEPT], number="9")
    outs = router.process_batch([Submission(d, f"edoc.{PC}") for d in mine] + [Submission(theirs, f"edoc.{FIN}")])
    assert [o.state for o in outs] == ["accepted"] * 4
    [pc_receipt] = receipts_for(p, PC)
    [fin_receipt] = receipts_for(p, FIN)
    assert [i.digest for i in pc_receipt.items] == [o.digest for o in outs[:3]]
    assert [i.digest for i in fin_receipt.items] == [outs[3].digest]
    # the seal on each item is the one on the TraceHeader each recipient got
    delivered = [d.body for d in inbox_mail(p, DEPT)]
    for item in pc_receipt.items:
        assert any(item.seal.encode() in body and item.relayed_at.encode() in body for body in delivered)
    assert receipts_for(p, DEPT) == []  # recipients get the documents, not receipts


def test_refused_documents_and_statuses_get_no_receipt(memory_province, router) -> None:
    p = memory_province
    refused = router.process(signed_edoc(p.settings, PC, [DEPT]), routing_key=f"edoc.{FIN}")  # not FIN's
    assert refused.state == "quarantined"
    garbage = router.process(b"<edXML>kh\xc3\xb4ng</edXML>", routing_key=f"edoc.{PC}")
    assert garbage.state == "quarantined"
    assert receipts_for(p, PC) == [] and receipts_for(p, FIN) == []
    assert len(inbox_mail(p, PC)) == 1 and len(inbox_mail(p, FIN)) == 1  # a 02 each instead
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        dept.receive()  # answers 01
        router.run()
    assert [len(r.items) for r in receipts_for(p, PC)] == [1]  # the document's, not for the 01
    assert receipts_for(p, DEPT) == []
    assert sent.published


def test_the_sender_sees_when_the_data_centre_relayed_its_document(memory_province, router) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        sent = pc.send([DEPT, FIN], subject="Quyết định giao chỉ tiêu", number="7", notation="QĐ-UBND", files=[_pdf(p)])
        [before] = pc.sent()
        assert before.accepted_at is None
        router.run()
        [relayed] = receipts_for(p, PC)[0].items
        assert pc.receive() == []  # a receipt is not mail: nothing stored, nothing handed over
        [after] = pc.sent()
    when = edxml.parse_timestamp(relayed.relayed_at)
    assert after.document_id == sent.document_id and when is not None
    assert after.accepted_at == f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}"
    assert not p.transport.queues[Names(p.settings.namespace).inbox(PC)]  # taken and acked
    env = {"DOCBUS_HOME": str(p.settings.home)}
    result = CliRunner().invoke(cli.main, ["sent", "--agency", PC, "--no-fetch"], env=env)
    assert result.exit_code == 0, result.output
    assert f"relayed by the data centre {edxml.vn_text(after.accepted_at)}" in result.output
    result = CliRunner().invoke(cli.main, ["sent", "--agency", PC, "--no-fetch", "--json"], env=env)
    assert json.loads(result.output)[0]["accepted_at"] == after.accepted_at


@pytest.mark.parametrize(
    "forgery",
    [
        "seal-of-another-document",
        "later-relay-time",
        "sealed-by-an-agency",
        "not-json",
        "wrong-shape",
    ],
)
def test_a_receipt_that_does_not_verify_dates_nothing(memory_province, router, forgery, caplog) -> None:
    from bus.envelope import relay

    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        queue = p.transport.queues[Names(p.settings.namespace).inbox(PC)]
        [real] = list(queue)
        queue.clear()
        item = receipt.read(real.body).items[0]
        other = relay(signed_edoc(p.settings, PC, [FIN], number="2"), hub_seal(p.settings))
        agency = relay(signed_edoc(p.settings, PC, [DEPT], number="1"), identity(p.settings, DEPT))
        later = dataclasses.replace(item, relayed_at="2099/01/01 00:00:00")
        body = {
            "seal-of-another-document": receipt.build(other.certificate, [dataclasses.replace(item, seal=other.seal)]),
            "later-relay-time": receipt.build(other.certificate, [later]),
            "sealed-by-an-agency": receipt.build(agency.certificate, [dataclasses.replace(item, seal=agency.seal)]),
            "not-json": b"\xff<edXML/>",
            "wrong-shape": json.dumps({"docbus-receipt": 1, "certificate": "", "documents": [[1, 2]]}).encode(),
        }[forgery]
        assert pc.accept_receipt(body) == 0
        [row] = pc.sent()
        assert row.accepted_at is None
        assert "ignored a receipt" in caplog.text
        assert pc.accept_receipt(real.body) == 1  # the real one still counts
        assert pc.sent()[0].accepted_at is not None


def test_a_receipt_for_another_agencys_document_dates_nothing(memory_province, router) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, FIN, transport=p.transport) as fin:
        pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        [real] = list(p.transport.queues[Names(p.settings.namespace).inbox(PC)])
        assert fin.accept_receipt(real.body) == 0  # not in FIN's outbox
        assert pc.accept_receipt(real.body) == 1
        assert pc.accept_receipt(real.body) == 0  # dated once


def test_an_old_store_gains_the_receipt_columns_and_keeps_its_mail(tmp_path) -> None:
    path = tmp_path / "store.db"
    open_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE outbox DROP COLUMN accepted_at")
        db.execute("ALTER TABLE outbox DROP COLUMN receipt_handed")
        db.execute(
            "INSERT INTO outbox (digest, kind, document_id, recipients, urgent, raw, created_at, attempts)"
            " VALUES ('d', 'edoc', 'X,2026/11/27,1/VP', '', 0, x'00', '2026-11-27 01:00:00', 0)"
        )
    store = open_store(path)
    try:
        [row] = store.Outbox.select()
        assert row.document_id == "X,2026/11/27,1/VP" and row.accepted_at is None and row.receipt_handed is None
    finally:
        store.close()


def _rounds_only_when_told(monkeypatch) -> None:
    monkeypatch.setattr("bus.router.RECEIPT_EVERY_S", 3600.0)
    monkeypatch.setattr("bus.router.RECEIPT_QUIET_S", 3600.0)


def _kept(router: Router | None = None) -> list[PendingReceipt]:
    rows = PendingReceipt.select().order_by(PendingReceipt.id)
    return [r for r in rows if router is None or r.router == router.router_id]


def test_the_consuming_router_acks_at_once_and_sends_the_receipts_together_later(
    memory_province, router, monkeypatch
) -> None:
    """At a steady rate each batch holds a document or two: their receipt items are kept in
    the archive with their deliveries' marks, the documents are acked then, and the items go
    out later as one receipt per sender."""
    _rounds_only_when_told(monkeypatch)
    p = memory_province
    acked: list[str] = []

    def delivery(data: bytes, name: str) -> Delivery:
        return Delivery(data, f"edoc.{PC}", user_id="guest", _ack=lambda: acked.append(name))

    for n in range(3):
        router.handle_batch([delivery(signed_edoc(p.settings, PC, [DEPT], number=str(n)), f"doc{n}")])
    router.settle()  # marks written with the receipt items: acked, receipts not yet due
    assert len(inbox_mail(p, DEPT)) == 3 and acked == ["doc0", "doc1", "doc2"]
    assert receipts_for(p, PC) == [] and [r.sender for r in _kept(router)] == [PC] * 3
    assert {m.receipted_at for m in Message.select()} == {None}
    router.settle(final=True)  # the loop ends, or RECEIPT_EVERY_S passed
    [together] = receipts_for(p, PC)
    assert len(together.items) == 3 and _kept() == []
    assert None not in {m.receipted_at for m in Message.select()}  # the archive says when the sender was told


def test_a_quiet_bus_sends_new_receipts_at_once_and_only_then(memory_province, router, monkeypatch) -> None:
    monkeypatch.setattr("bus.router.RECEIPT_EVERY_S", 3600.0)
    monkeypatch.setattr("bus.router.RECEIPT_QUIET_S", 0.0)
    p = memory_province
    router.handle_batch([Delivery(signed_edoc(p.settings, PC, [DEPT]), f"edoc.{PC}", user_id="guest")])
    router.settle()  # the consuming loop found nothing more to do
    assert len(receipts_for(p, PC)) == 1 and _kept() == []
    looked = []
    monkeypatch.setattr(p.archive, "receipts_to_send", lambda *a: looked.append(a) or [])
    router.settle()  # quiet again, nothing new kept: the archive is not asked
    assert looked == []


def test_receipts_go_out_every_round_with_the_items_already_kept(memory_province, router, monkeypatch) -> None:
    """Under load the round comes from the batches: what a batch keeps is committed with the
    next one, so a round sends the items of the batches before the last."""
    _rounds_only_when_told(monkeypatch)
    p = memory_province
    digests = []
    for n in range(3):
        if n == 2:
            monkeypatch.setattr("bus.router.RECEIPT_EVERY_S", 0.0)
        data = signed_edoc(p.settings, PC, [DEPT], number=str(n))
        digests.append(Submission(data, "").digest)
        router.handle_batch([Delivery(data, f"edoc.{PC}", user_id="guest")])
    [first] = receipts_for(p, PC)
    assert [i.digest for i in first.items] == digests[:2]
    router.settle(final=True)
    assert [i.digest for r in receipts_for(p, PC) for i in r.items] == digests


def test_a_senders_many_items_go_in_receipts_of_bounded_size(memory_province, router, monkeypatch) -> None:
    monkeypatch.setattr("bus.router.RECEIPT_MAX_ITEMS", 2)
    p = memory_province
    subs = [Submission(signed_edoc(p.settings, PC, [DEPT], number=str(n)), f"edoc.{PC}") for n in range(5)]
    router.process_batch(subs)
    assert [len(r.items) for r in receipts_for(p, PC)] == [2, 2, 1]


def test_a_router_that_stopped_leaves_its_receipts_to_another(memory_province, router, monkeypatch) -> None:
    _rounds_only_when_told(monkeypatch)
    p = memory_province
    router.handle_batch([Delivery(signed_edoc(p.settings, PC, [DEPT]), f"edoc.{PC}", user_id="guest")])
    router.settle()  # kept, then the process is killed before its round
    other = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    assert other.send_receipts() == 0 and receipts_for(p, PC) == []  # a live router sends its own
    monkeypatch.setattr("bus.router.ORPHAN_AFTER_S", 0.0)
    assert other.send_receipts() == 1
    [receipt_] = receipts_for(p, PC)
    assert len(receipt_.items) == 1 and _kept() == []


def test_a_receipt_the_broker_refuses_is_sent_again_one_without_an_inbox_is_dropped(
    memory_province, router, monkeypatch, caplog
) -> None:
    from bus.transport import DeliveryFailed

    p = memory_province
    refusal = {"reason": "nacked"}
    real = p.transport.publish_many

    def refusing(messages, **kw):
        messages = list(messages)
        if any(m.headers.get("x-docbus-kind") == receipt.KIND for m in messages):
            return [DeliveryFailed("refused", reason=refusal["reason"]) for _ in messages]
        return real(messages, **kw)

    monkeypatch.setattr(p.transport, "publish_many", refusing)
    router.process(signed_edoc(p.settings, PC, [DEPT], number="1"), routing_key=f"edoc.{PC}")
    assert receipts_for(p, PC) == [] and len(_kept()) == 1  # the broker refused it: kept
    monkeypatch.setattr("bus.router.RECEIPT_ROWS", 1)  # a round's worth kept: the router still stops
    rounds = []
    send = router.send_receipts

    def counted() -> int:
        rounds.append(1)
        assert len(rounds) < 5, "settle(final=True) kept sending what the broker kept refusing"
        return send()

    monkeypatch.setattr(router, "send_receipts", counted)
    router.settle(final=True)
    assert len(rounds) == 1 and len(_kept()) == 1
    monkeypatch.setattr(router, "send_receipts", send)
    refusal["reason"] = "unroutable"
    router.send_receipts()
    assert _kept() == [] and "could not deliver a receipt" in caplog.text
    monkeypatch.setattr(p.transport, "publish_many", real)
    router.process(signed_edoc(p.settings, PC, [DEPT], number="2"), routing_key=f"edoc.{PC}")
    assert [len(r.items) for r in receipts_for(p, PC)] == [1]


def test_a_redelivered_document_already_delivered_gets_no_second_receipt(memory_province, router) -> None:
    p = memory_province
    data = signed_edoc(p.settings, PC, [DEPT], number="1")
    router.process(data, routing_key=f"edoc.{PC}")
    again = router.process(data, routing_key=f"edoc.{PC}", redelivered=True)
    assert again.state == "duplicate" and len(inbox_mail(p, DEPT)) == 1  # not delivered twice
    assert len(receipts_for(p, PC)) == 1


def test_a_router_killed_before_its_marks_leaves_the_receipt_to_the_redelivery(
    memory_province, router, monkeypatch
) -> None:
    """Marks and receipt items are written together: a router killed before that commit
    leaves the document unacked, and the router it is redelivered to finishes both,
    sealing the relay anew."""
    _rounds_only_when_told(monkeypatch)
    p = memory_province
    data = signed_edoc(p.settings, PC, [DEPT], number="1")
    router.handle_batch([Delivery(data, f"edoc.{PC}", user_id="guest")])  # delivered, marks pending: killed
    other = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    again = other.process(data, routing_key=f"edoc.{PC}", redelivered=True)
    assert again.state == "duplicate"
    [resent] = receipts_for(p, PC)
    [item] = resent.items  # sealed over this very envelope's signature
    assert item.digest == again.digest
    trace = HubTrace(edxml.TraceHeader(p.settings.hub_organ_id, item.relayed_at), resent.certificate, item.seal)
    assert check_hub_traces([trace], sender_signature(data), load_trust(p.settings))


def test_a_receipt_of_thousands_of_items_dates_the_one_in_the_outbox(memory_province, router) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.send([DEPT], subject="Công văn", number="1", notation="UBND-VP", files=[_pdf(p)])
        router.run()
        [real] = receipt.read(p.transport.queues[Names(p.settings.namespace).inbox(PC)].popleft().body).items
        filler = [dataclasses.replace(real, digest=f"{n:064x}") for n in range(2000)]  # in no outbox
        body = receipt.build(router.seal_certificate, [*filler, real])
        assert len(body) <= receipt.MAX_BYTES
        assert pc.accept_receipt(body) == 1


def test_the_drop_folder_gets_each_receipt_once_even_one_a_clerks_listing_took_in(
    memory_province, router, tmp_path
) -> None:
    from adapters import drop
    from bus.errors import HandOffFailed

    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        sent = pc.send([DEPT], subject="Tờ trình", number="7", notation="TTr-UBND", files=[_pdf(p)])
        router.run()
        pc.receive(hand=False)  # `docbus inbox`: the receipt dates the outbox, nobody is told yet
        accepted_at = pc.sent()[0].accepted_at
        assert accepted_at is not None
        not_a_folder = tmp_path / "drop-is-a-file"
        not_a_folder.write_text("")
        pc.on_receipt = lambda *args: drop.write_receipt(not_a_folder, *args)  # as `adapter run --drop` does
        with pytest.raises(HandOffFailed, match=r"receipt for .*handed again"):
            pc.hand_pending()
        pc.on_receipt = lambda *args: drop.write_receipt(tmp_path / "drop", *args)
        assert pc.hand_pending() == 1  # what adapter run does each round
        assert pc.hand_pending() == 0  # once
    written = json.loads((tmp_path / "drop" / f"{sent.digest[:16]}.receipt.json").read_text(encoding="utf-8"))
    assert (written["document_id"], written["relayed_at_utc"]) == (sent.document_id, accepted_at)
    assert edxml.parse_timestamp(written["relayed_at"]).astimezone(dt.UTC).replace(
        tzinfo=None
    ) == dt.datetime.fromisoformat(accepted_at)


def test_a_running_adapter_tells_its_system_of_a_receipt_as_it_arrives(memory_province, router) -> None:
    p = memory_province
    told: list[str] = []
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.on_receipt = lambda document_id, digest, at: told.append(digest)
        sent = pc.send([DEPT], subject="Tờ trình", number="8", notation="TTr-UBND", files=[_pdf(p)])
        router.run()
        assert pc.receive() == [] and told == [sent.digest]
