"""Sao lục (``Adapter.send_copy``): a received document on to other agencies, on the in-memory transport."""

from __future__ import annotations

import hashlib
import os

import pytest

from adapters import Adapter
from bus.archive import Message
from bus.envelope import open_envelope
from bus.errors import NotFound, Refused
from bus.router import Router, load_trust

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


def route(p) -> None:
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()


def received_by_pc(p, tmp_path, name: str, number: str):
    """The department sends the People's Committee a one-file công văn, which it takes in."""
    scan = tmp_path / name
    scan.write_bytes(f"%PDF-1.4 {name}".encode())
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = dept.send([PC], subject="Công văn", number=number, notation="SNV", files=[scan])
    route(p)
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()
    return sent


def test_a_copy_carries_the_files_and_the_signed_original(small_inline, tmp_path) -> None:
    p = small_inline  # files over 64 KiB travel in chunks: the original has one of each kind
    scan, plan = tmp_path / "quyet-dinh.pdf", tmp_path / "ban-do.tif"
    scan.write_bytes(b"%PDF-1.4 quyet dinh")
    plan.write_bytes(os.urandom(200_000))
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = dept.send([PC], subject="Quyết định ban hành quy chế", number="5", notation="QĐ-SNV",
                         type_name="Quyết định", priority=1, files=[scan, plan])  # fmt: skip
    route(p)
    cover = tmp_path / "cong-van.pdf"
    cover.write_bytes(b"%PDF-1.4 cong van sao luc")
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()
        _, stored = pc._received(sent.document_id)
        copy = pc.send_copy(sent.document_id, [FIN], number="12", notation="SL-UBND", files=[cover])
    route(p)
    assert Message.get(Message.document_id == copy.document_id).state == "accepted"

    with Adapter(p.settings, FIN, transport=p.transport) as fin:
        [item] = fin.receive()
        doc = fin.document(copy.document_id)
    assert item.document_id == copy.document_id and doc.sender.organ_id == PC
    assert (doc.code_number, doc.code_notation) == ("12", "SL-UBND")
    assert doc.subject == "Sao lục: Quyết định ban hành quy chế"
    assert (doc.type_name, doc.priority) == ("Quyết định", 1)  # as the original, unless the clerk says otherwise
    assert sent.document_id in doc.content and "Quyết định số 5/QĐ-SNV" in doc.content
    assert [a.name for a in doc.attachments] == ["cong-van.pdf", "quyet-dinh.pdf", "ban-do.tif", "ban-goc.edxml"]
    cover_a, scan_a, plan_a, original_a = doc.attachments
    assert cover_a.data == cover.read_bytes()  # the Committee's own files first
    assert scan_a.data == scan.read_bytes()
    assert plan_a.external is not None and plan_a.path is not None  # still by reference, in chunks
    assert hashlib.sha256(plan_a.path.read_bytes()).digest() == hashlib.sha256(plan.read_bytes()).digest()
    assert original_a.data == stored  # the envelope as the People's Committee received it, sealed trace included
    opened = open_envelope(original_a.data, load_trust(p.settings), from_hub=True)
    assert opened.message.sender.organ_id == DEPT and opened.message.document_id == sent.document_id
    assert opened.relayed is not None  # the data centre's seal on the original's relay


def test_only_a_document_in_the_inbox_is_copied(memory_province) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, pytest.raises(NotFound, match="not in the inbox"):
        pc.send_copy(f"{DEPT},2026/01/01,1/X", [FIN], number="1", notation="SL")


def test_an_original_envelope_over_the_inline_limit_goes_by_reference(small_inline, tmp_path) -> None:
    p = small_inline
    files = []
    for name in ("phu-luc-1.pdf", "phu-luc-2.pdf"):  # each inline (under 64 KiB), the envelope over it
        files.append(tmp_path / name)
        files[-1].write_bytes(os.urandom(60_000))
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = dept.send([PC], subject="Kế hoạch", number="6", notation="KH-SNV", files=files)
    route(p)
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()
        _, stored = pc._received(sent.document_id)
        assert len(stored) > p.settings.limits.inline_attachment_bytes
        copy = pc.send_copy(sent.document_id, [FIN], number="13", notation="SL-UBND")
    route(p)
    with Adapter(p.settings, FIN, transport=p.transport) as fin:
        fin.receive()
        original = fin.document(copy.document_id).attachments[-1]
    assert original.name == "ban-goc.edxml" and original.external is not None
    assert original.path is not None and original.path.read_bytes() == stored


def test_a_revoked_document_is_not_distributed(memory_province, tmp_path) -> None:
    p = memory_province
    sent = received_by_pc(p, tmp_path, "cv.pdf", "7")
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.send_copy(sent.document_id, [FIN], number="8", notation="SL")  # before: copied
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        dept.send([PC], subject="Thu hồi", number="7", notation="SNV", business_doc_type=1, about=sent.document_id)
    route(p)
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()
        with pytest.raises(Refused, match=f"was revoked \\(thu hồi\\) by {DEPT}") as refused:
            pc.send_copy(sent.document_id, [FIN], number="9", notation="SL")
    assert refused.value.reason == "revoked"


def test_a_cover_letter_named_as_an_original_file_keeps_both_apart(memory_province, tmp_path) -> None:
    p = memory_province
    sent = received_by_pc(p, tmp_path, "van-ban.pdf", "5")
    cover = tmp_path / "cover" / "van-ban.pdf"
    cover.parent.mkdir()
    cover.write_bytes(b"%PDF-1.4 cover")
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        copy = pc.send_copy(sent.document_id, [FIN], number="12", notation="SL", files=[cover])
    route(p)
    with Adapter(p.settings, FIN, transport=p.transport) as fin:
        fin.receive()
        attachments = fin.document(copy.document_id).attachments
    assert [(a.name, a.data[:14]) for a in attachments[:2]] == [
        ("van-ban.pdf", b"%PDF-1.4 cover"),
        ("van-ban-2.pdf", b"%PDF-1.4 van-b"),
    ]
    assert len({a.content_id for a in attachments}) == len(attachments)
