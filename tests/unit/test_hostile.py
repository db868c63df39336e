"""The hostile corpus against the router (in-memory transport) and `docbus verify`: same reasons."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner

from bus import compose, province
from bus.archive import Message
from bus.errors import SignatureRejected
from bus.router import Router, load_trust
from bus.topology import Names
from cli import main
from signing.identity import Identity
from tests.helpers import edoc, inbox_mail, signed_edoc
from tests.hostile import DEPT, PC, hostile_corpus, replay_variant


@pytest.fixture
def corpus_setup(archive_province):
    p = archive_province
    s = p.settings
    old, _ = province.rotate(s, p.archive, PC, dt.timedelta(days=7))
    home = s.agency_home(PC)
    old_ident = Identity(
        PC, "UBND", (home / f"key-{old.serial}.pem").read_bytes(), (home / f"cert-{old.serial}.pem").read_bytes()
    )
    revoked = compose.sign(edoc(PC, [DEPT]), old_ident)
    province.revoke(s, p.archive, old.serial, "lộ khóa", None)
    router = Router(s, p.transport, p.archive, load_trust(s), p.hub)
    return p, router, hostile_corpus(s, revoked_cert=revoked)


def inbox(p, organ):
    return inbox_mail(p, organ)


def test_every_hostile_case_is_refused_quarantined_answered_and_never_delivered(corpus_setup) -> None:
    p, router, corpus = corpus_setup
    assert len(corpus) >= 26
    for case in corpus:
        out = router.process(case.data, routing_key=f"edoc.{case.sender}", redelivered=False)
        assert (case.name, out.state, out.reason) == (case.name, "quarantined", case.reason)
        rec = Message.get(Message.digest == out.digest)
        assert rec.state == "quarantined" and rec.reason == case.reason and rec.size == len(case.data)
        answer = inbox(p, PC)[-1].body
        assert b"<edXML:StatusCode>02</edXML:StatusCode>" in answer and f"[{case.reason}]".encode() in answer
    assert inbox(p, DEPT) == []
    # the oversized ones are kept as their head only
    big = Message.get(Message.reason == "too-large")
    assert len(p.archive.raw(big)) == 64 * 1024
    # and the router goes on
    good = router.process(signed_edoc(p.settings, PC, [DEPT], number="777"), routing_key=f"edoc.{PC}")
    assert good.state == "accepted" and len(inbox(p, DEPT)) == 1


def test_docbus_verify_refuses_each_case_with_the_same_reason(corpus_setup, tmp_path) -> None:
    p, _, corpus = corpus_setup
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": p.settings.namespace}
    env |= {"DOCBUS_DB_URL": p.settings.db_url} if p.settings.db_url else {}
    for case in corpus:
        path = tmp_path / f"{case.name}.edxml"
        path.write_bytes(case.data)
        res = CliRunner().invoke(main, ["verify", "--json", str(path)], env=env)
        assert res.exit_code == 1, (case.name, res.output)
        import json

        (result,) = json.loads(res.output)
        assert (case.name, result["reason"]) == (case.name, case.expected_by_verify)


def test_exact_replay_and_a_byte_variant_are_refused_as_replays(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    data = signed_edoc(p.settings, PC, [DEPT])
    assert router.process(data, routing_key=f"edoc.{PC}", redelivered=False).state == "accepted"
    again = router.process(data, routing_key=f"edoc.{PC}", redelivered=False)
    variant = router.process(replay_variant(data), routing_key=f"edoc.{PC}", redelivered=False)
    assert (again.reason, variant.reason) == ("replay", "replay")
    assert len(inbox(p, DEPT)) == 1
    assert [b"[replay]" in d.body for d in inbox(p, PC)] == [True, True]
    # a redelivery of the same bytes (a router died before its ack) is no replay: silently complete
    assert router.process(data, routing_key=f"edoc.{PC}", redelivered=True).state == "duplicate"


def test_stale_and_future_messages_are_refused(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    vn = dt.timezone(dt.timedelta(hours=7))
    old = compose.sign(
        edoc(PC, [DEPT], now=dt.datetime.now(vn) - dt.timedelta(days=30)), Identity.load(PC, p.settings.agency_home(PC))
    )
    future = compose.sign(
        edoc(PC, [DEPT], now=dt.datetime.now(vn) + dt.timedelta(hours=2)), Identity.load(PC, p.settings.agency_home(PC))
    )
    assert router.process(old, routing_key=f"edoc.{PC}").reason == "stale"
    assert router.process(future, routing_key=f"edoc.{PC}").reason == "clock-skew"


def test_rotation_keeps_the_old_certificate_valid_for_the_overlap_only(memory_province) -> None:
    p = memory_province
    s = p.settings
    before = signed_edoc(s, PC, [DEPT], number="1")
    old, new = province.rotate(s, p.archive, PC, dt.timedelta(days=7))
    router = Router(s, p.transport, p.archive, load_trust(s), p.hub)
    after = signed_edoc(s, PC, [DEPT], number="2")
    assert b"X509Certificate" in after and before != after
    assert router.process(before, routing_key=f"edoc.{PC}").state == "accepted"  # old cert, inside the overlap
    assert router.process(after, routing_key=f"edoc.{PC}").state == "accepted"  # new cert
    from bus.archive import Certificate, utcnow

    Certificate.update(retire_after=utcnow() - dt.timedelta(seconds=1)).where(
        Certificate.serial == old.serial
    ).execute()
    router.registry.invalidate()
    late = compose.sign(
        edoc(PC, [DEPT], number="3"),
        Identity(
            PC,
            "x",
            (s.agency_home(PC) / f"key-{old.serial}.pem").read_bytes(),
            (s.agency_home(PC) / f"cert-{old.serial}.pem").read_bytes(),
        ),
    )
    assert router.process(late, routing_key=f"edoc.{PC}").reason == "cert-retired"
    assert new.state == "active"


def test_revocation_reaches_the_router_within_its_refresh(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    assert router.process(signed_edoc(p.settings, PC, [DEPT], number="1"), routing_key=f"edoc.{PC}").state == "accepted"
    province.revoke(p.settings, p.archive, PC, "mất thiết bị ký", p.transport)
    import time

    time.sleep(router.registry.ttl + 0.05)
    out = router.process(signed_edoc(p.settings, PC, [DEPT], number="2"), routing_key=f"edoc.{PC}")
    assert out.reason == "cert-revoked"
    # and every agency's inbox received the CA-signed revocation list
    crl_msgs = [d for d in inbox(p, DEPT) if d.headers.get("x-docbus-kind") == "crl"]
    assert len(crl_msgs) == 1


def test_adapter_honours_a_revocation_list_from_the_bus(memory_province) -> None:
    from adapters import Adapter

    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    router.process(signed_edoc(p.settings, PC, [DEPT], number="1"), routing_key=f"edoc.{PC}")
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        assert dept.trust.revoked_serials == frozenset()
        province.revoke(p.settings, p.archive, PC, "mất thiết bị ký", p.transport)  # the CRL queues behind the document
        got = dept.receive()
        assert [(i.kind, i.state) for i in got] == [("edoc", "handed")]  # signed before the revocation
        assert dept.crl_path.exists() and len(dept.trust.revoked_serials) == 1
        late = dept.accept(signed_edoc(p.settings, PC, [DEPT], number="9"))
    assert (late.state, late.reason) == ("invalid", "cert-revoked")


def test_a_trace_in_the_data_centres_name_without_its_seal_is_refused_by_the_recipient(memory_province) -> None:
    """Whoever could write to an inbox (a misconfigured permission, a broker operator) cannot
    pass off a TraceHeader as the data centre's: the recipient keeps the delivery as invalid,
    with the reason, and tells the sender it was not taken in."""
    from dataclasses import replace

    from adapters import Adapter
    from bus.envelope import append_hub_trace
    from tests.helpers import identity

    p = memory_province
    names = Names(p.settings.namespace)
    agency_key = replace(identity(p.settings, DEPT), organ_id=p.settings.hub_organ_id)
    forged = append_hub_trace(signed_edoc(p.settings, PC, [DEPT], number="5"), agency_key)
    unsealed = signed_edoc(p.settings, PC, [DEPT], number="6").replace(
        b"</edXML:TraceHeaderList>",
        f"<edXML:TraceHeader><edXML:OrganId>{p.settings.hub_organ_id}</edXML:OrganId>"
        "<edXML:Timestamp>2026/11/28 08:00:00</edXML:Timestamp></edXML:TraceHeader></edXML:TraceHeaderList>".encode(),
    )
    assert unsealed.count(p.settings.hub_organ_id.encode()) >= 1
    for body in (forged, unsealed):
        p.transport.publish(names.deliver, Names.deliver_key(DEPT), body)
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        got = dept.receive()
        assert [(i.state, i.reason) for i in got] == [("invalid", "trace-seal")] * 2
        assert dept.pending() == 0  # both 02s went out with the refusals' transaction
    # the 02s reach the data centre, which never relayed those documents: the operators see it
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()
    refused = Message.select().where((Message.sender == DEPT) & (Message.state == "quarantined"))
    assert sorted((m.reason, m.kind) for m in refused) == [("unknown-document", "status")] * 2
    assert all(b"[trace-seal]" in p.archive.raw(m) for m in refused)  # the 02 says why


def test_a_document_received_before_its_signers_revocation_stays_readable(memory_province, tmp_path) -> None:
    """A clerk opens and saves what an agency sent before its key was revoked (the stored copy
    is verified again as the recipient verified it: the signer as of the data centre's sealed
    relay time); a copy altered in the store is not readable."""
    from adapters import Adapter
    from bus import edxml
    from bus.envelope import append_hub_trace
    from tests.helpers import hub_seal

    p = memory_province
    earlier = edxml.now_vn() - dt.timedelta(seconds=30)
    body = signed_edoc(p.settings, PC, [DEPT], number="3", now=earlier)
    delivered = append_hub_trace(body, hub_seal(p.settings), earlier + dt.timedelta(seconds=2))
    p.transport.publish(Names(p.settings.namespace).deliver, Names.deliver_key(DEPT), delivered)
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        [item] = dept.receive()
        assert item.state == "handed"
        province.revoke(p.settings, p.archive, PC, "mất thiết bị ký", p.transport)
        dept.receive()  # the revocation list
        assert len(dept.trust.revoked_serials) == 1
        assert dept.document(item.document_id).subject == "Công văn V/v kết nối"
        assert [f.name for f in dept.save_attachments(item.document_id, tmp_path / "saved")] == ["cong-van.pdf"]
        Inbox = dept.store.Inbox
        raw = bytes(Inbox.get(Inbox.digest == item.digest).raw)
        Inbox.update(raw=raw.replace("kết nối".encode(), "kết lối".encode())).execute()
        with pytest.raises(SignatureRejected):
            dept.document(item.document_id)
