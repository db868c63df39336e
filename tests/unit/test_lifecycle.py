"""Revoke, update, replace a delivered document; the recall handshake (13 -> 15/16); urgent first."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapters import Adapter
from bus import edxml
from bus.router import Router, load_trust
from bus.topology import Names
from cli import main

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


@pytest.fixture
def bus(memory_province):
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    pdf = p.settings.home / "qd.pdf"
    pdf.write_bytes(b"%PDF-1.4 quyet dinh")
    adapters = {c: Adapter(p.settings, c, transport=p.transport) for c in (PC, DEPT, FIN)}
    yield p, router, adapters, pdf
    for a in adapters.values():
        a.close()


def cycle(router, adapters) -> dict[str, list]:
    router.run()
    got = {c: a.receive() for c, a in adapters.items()}
    router.run()  # the automatic 01s
    for c, a in adapters.items():
        got[c] += a.receive()
    return got


def test_revoke_and_update_mark_the_recipients_copy(bus) -> None:
    p, router, a, pdf = bus
    sent = a[PC].send([DEPT, FIN], subject="Quyết định 15", number="15", notation="QĐ-UBND", files=[pdf])
    cycle(router, a)
    upd = a[PC].send(
        [DEPT, FIN],
        subject="Quyết định 15 (cập nhật)",
        number="15",
        notation="QĐ-UBND",
        files=[pdf],
        business_doc_type=2,
        about=sent.document_id,
    )
    assert upd.document_id == sent.document_id
    cycle(router, a)
    assert [(i.subject, i.superseded) for i in a[DEPT].inbox("edoc")] == [
        ("Quyết định 15", "updated"),
        ("Quyết định 15 (cập nhật)", None),
    ]
    a[PC].send(
        [DEPT],
        subject="Thu hồi Quyết định 15",
        number="15",
        notation="QĐ-UBND",
        business_doc_type=1,
        about=sent.document_id,
    )
    cycle(router, a)  # a revocation needs no file
    assert {i.superseded for i in a[DEPT].inbox("edoc")} == {"revoked", None}
    from cli import _inbox_state

    states = sorted(_inbox_state(i) for i in a[DEPT].inbox("edoc"))  # the original, its update, the revocation
    assert states == ["handed", "handed, revoked (thu hồi)", "handed, revoked (thu hồi)"]
    trace = p.archive.trace(sent.document_id)
    assert [s["business_doc_type"] for s in trace["submissions"]] == [0, 2, 1]


def test_revoke_to_a_non_recipient_or_of_an_unknown_document_is_refused(bus) -> None:
    _p, router, a, pdf = bus
    sent = a[PC].send([DEPT], subject="Công văn", number="1", notation="UBND", files=[pdf])
    cycle(router, a)
    a[PC].send([FIN], subject="Thu hồi", number="1", notation="UBND", business_doc_type=1, about=sent.document_id)
    a[PC].send(
        [DEPT],
        subject="Thu hồi",
        number="9",
        notation="UBND",
        business_doc_type=1,
        about="000.00.00.H61,2020/01/01,9/UBND",
    )
    got = cycle(router, a)
    reasons = sorted(i.subject.split("]")[0][1:] for i in got[PC] if i.status_code == "02")
    assert reasons == ["not-recipient", "unknown-document"]
    assert [i.kind for i in got[FIN]] == []


def test_replace_names_the_replaced_document(bus) -> None:
    _p, router, a, pdf = bus
    old = a[PC].send([DEPT], subject="Kế hoạch 2026", number="3", notation="KH-UBND", files=[pdf])
    cycle(router, a)
    new = a[PC].send(
        [DEPT],
        subject="Kế hoạch 2026 (thay thế)",
        number="4",
        notation="KH-UBND",
        files=[pdf],
        business_doc_type=3,
        replaces=[old.document_id],
    )
    cycle(router, a)
    copies = {i.document_id: i.superseded for i in a[DEPT].inbox("edoc")}
    assert copies == {old.document_id: "replaced", new.document_id: None}


def test_a_number_is_in_use_once_sent_and_free_again_when_the_hub_refuses_it(bus) -> None:
    _p, router, a, pdf = bus
    assert a[PC].number_in_use("9", "UBND") is None
    sent = a[PC].send([DEPT], subject="Công văn", number="9", notation="UBND", files=[pdf])
    used = a[PC].number_in_use("9", "UBND")
    assert used is not None and (used.document_id, used.published) == (sent.document_id, True)
    assert a[PC].number_in_use("9", "UBND-VP") is None and a[DEPT].number_in_use("9", "UBND") is None
    cycle(router, a)
    assert a[PC].number_in_use("9", "UBND") is not None  # delivered, answered 01: still its number

    refused = a[PC].send([DEPT], subject="Không có tệp", number="10", notation="UBND")  # no electronic file
    cycle(router, a)
    assert [i.status_code for i in a[PC].inbox("status") if i.document_id == refused.document_id] == ["02"]
    assert a[PC].number_in_use("10", "UBND") is None
    a[PC].send([DEPT], subject="Có tệp", number="10", notation="UBND", files=[pdf])
    assert a[PC].number_in_use("10", "UBND") is not None


def test_the_senders_register_shows_each_recipients_latest_answer_and_refusals(bus) -> None:
    _p, router, a, pdf = bus
    sent = a[PC].send([DEPT, FIN], subject="Quyết định 20", number="20", notation="QĐ-UBND", files=[pdf])
    cycle(router, a)
    assert [i.answered for i in a[DEPT].inbox("edoc")] == ["01"]  # on its own, on arrival
    a[DEPT].send_status(sent.document_id, PC, "03", "Đã vào sổ văn bản đến số 345")
    assert [i.answered for i in a[DEPT].inbox("edoc")] == ["03"] and a[FIN].inbox("edoc")[0].answered == "01"
    refused = a[PC].send([DEPT], subject="Thiếu tệp", number="21", notation="QĐ-UBND")
    cycle(router, a)
    first, second = a[PC].sent()
    assert (first.document_id, first.subject, first.published) == (sent.document_id, "Quyết định 20", True)
    assert first.refused is None
    assert {org: ans[0] if ans else None for org, ans in first.answers.items()} == {DEPT: "03", FIN: "01"}
    assert first.notes == {DEPT: "Đã vào sổ văn bản đến số 345"}  # FIN's 01 says only "Đã đến"
    assert second.document_id == refused.document_id and second.answers == {DEPT: None}
    assert second.refused is not None and second.refused.startswith("[no-electronic-file] ")
    assert "sha256" not in second.refused
    assert [i.document_id for i in a[PC].sent(last=1)] == [refused.document_id] and a[PC].sent_count() == 2
    assert a[DEPT].sent() == []  # its 03 is a status, not a document it sent


def test_recall_handshake(bus) -> None:
    p, router, a, pdf = bus
    sent = a[PC].send([DEPT, FIN], subject="Công văn gửi nhầm", number="8", notation="UBND", files=[pdf])
    cycle(router, a)
    a[PC].recall(sent.document_id)
    got = cycle(router, a)
    assert [(i.status_code, i.sender) for i in got[DEPT] if i.kind == "status"] == [("13", PC)]
    assert [(i.status_code, i.sender) for i in got[FIN] if i.kind == "status"] == [("13", PC)]
    a[DEPT].send_status(sent.document_id, PC, "15", "Đồng ý thu hồi")
    a[FIN].send_status(sent.document_id, PC, "16", "Đã ban hành văn bản thực hiện")
    got = cycle(router, a)
    assert sorted((i.status_code, i.sender) for i in got[PC] if i.kind == "status") == [("15", DEPT), ("16", FIN)]
    trace = p.archive.trace(sent.document_id)["submissions"][0]
    per = {r["organ_id"]: [s["code"] for s in r["statuses"]] for r in trace["recipients"]}
    assert per == {DEPT: ["01", "15"], FIN: ["01", "16"]}
    assert [(s["organ_id"], s["code"]) for s in trace["other_statuses"]] == [(PC, "13")]
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": p.settings.namespace}
    shown = CliRunner().invoke(main, ["trace", sent.document_id], env=env).output
    assert "16 Từ chối thu hồi/cập nhật: Đã ban hành văn bản thực hiện" in shown  # why, for the sender's clerk
    assert "15 Đồng ý thu hồi/cập nhật: Đồng ý thu hồi" in shown and "01 Đã đến  " in shown  # no ": Đã đến"
    assert trace["receipted_at"] and f"receipt went to the sender {edxml.vn_text(trace['receipted_at'])}" in shown
    register = CliRunner().invoke(main, ["sent", "--agency", PC, "--no-fetch", sent.document_id], env=env).output
    assert "Đã ban hành văn bản thực hiện" in register


def test_only_the_sender_may_recall(bus) -> None:
    _p, router, a, pdf = bus
    sent = a[PC].send([DEPT], subject="Công văn", number="8", notation="UBND", files=[pdf])
    cycle(router, a)
    a[DEPT].send_status(sent.document_id, DEPT, "13")
    got = cycle(router, a)
    assert [i.subject.split("]")[0] for i in got[DEPT] if i.status_code == "02"] == ["[unknown-document"]


def test_urgent_document_overtakes_a_backlog(bus) -> None:
    p, router, a, pdf = bus
    for n in range(20):
        a[PC].send([DEPT], subject=f"Thường {n}", number=str(n), notation="UBND", files=[pdf])
    a[PC].send([DEPT], subject="Hỏa tốc", number="99", notation="UBND", files=[pdf], priority=3)
    router.run()
    names = Names(p.settings.namespace)
    assert len(p.transport.queues[names.inbox_urgent(DEPT)]) == 1
    got = a[DEPT].receive()
    assert got[0].subject == "Hỏa tốc" and len(got) == 21


def test_an_agency_added_to_an_in_memory_bus_touches_no_real_broker(memory_province, monkeypatch) -> None:
    """No broker users for a bus that has no broker, even with a management API reachable."""
    from bus import province

    def no_management_api(settings):
        raise AssertionError("the management API was asked")

    monkeypatch.setattr(province, "_admin", no_management_api)
    p = memory_province
    agency, created = province.add_agency(p.settings, p.archive, p.transport, "000.00.07.H61", "Sở Y tế")
    assert created and agency.broker_user is None
    assert Names(p.settings.namespace).inbox("000.00.07.H61") in p.transport.queues  # its inbox is declared


def test_an_agency_needs_a_real_organ_id_and_a_name(memory_province) -> None:
    from bus import province
    from bus.errors import ConfigError

    p = memory_province
    with pytest.raises(ConfigError, match="not a QCVN 102:2016 OrganId"):
        province.add_agency(p.settings, p.archive, p.transport, "abc", "Sở X")
    with pytest.raises(ConfigError, match="needs a name"):
        province.add_agency(p.settings, p.archive, p.transport, "000.00.08.H61", "  ")
    assert not p.settings.agency_home("000.00.08.H61").exists()  # no key issued for it


def test_the_clerks_pending_list_holds_what_is_not_registered_yet(bus) -> None:
    p, router, a, pdf = bus
    first = a[PC].send([DEPT], subject="Công văn 30", number="30", notation="UBND", files=[pdf])
    second = a[PC].send([DEPT], subject="Công văn 31", number="31", notation="UBND", files=[pdf])
    third = a[PC].send([DEPT], subject="Công văn 32", number="32", notation="UBND", files=[pdf])
    cycle(router, a)
    assert [i.document_id for i in a[DEPT].inbox(pending=True)] == [
        first.document_id,
        second.document_id,
        third.document_id,
    ]  # 01 only, on arrival
    a[DEPT].send_status(first.document_id, PC, "03", "Đã vào sổ")
    a[PC].send([DEPT], subject="Thu hồi", number="32", notation="UBND", business_doc_type=1, about=third.document_id)
    cycle(router, a)
    pending = a[DEPT].inbox(pending=True)
    assert [(i.document_id, i.subject) for i in pending] == [
        (second.document_id, "Công văn 31"),
        (third.document_id, "Thu hồi"),  # the revocation itself is to be taken up, not the revoked copy
    ]
    assert [i.document_id for i in a[DEPT].inbox(pending=True, last=1)] == [third.document_id]
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": p.settings.namespace}
    listed = CliRunner().invoke(main, ["inbox", "--agency", DEPT, "--pending", "--no-fetch", "--json"], env=env)
    assert [i["subject"] for i in json.loads(listed.output)] == ["Công văn 31", "Thu hồi"]
