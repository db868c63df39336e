"""Sao lục of a central document that came outside the bus (``Adapter.send_outside_copy``):
the real national-axis samples and hostile files, on the in-memory transport."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import pytest

from adapters import Adapter
from adapters.adapter import OUTSIDE_NOTE
from bus import edxml, safexml
from bus.archive import Message
from bus.demo import national_axis_edoc
from bus.envelope import open_envelope
from bus.errors import MalformedEnvelope, PolicyRefusal, Refused, SignatureRejected
from bus.router import Router, load_trust
from tests.conftest import interop_files

PC, FIN, HOME_AFFAIRS = "000.00.00.H61", "000.00.02.H61", "000.00.01.H61"


def route(p) -> None:
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()


def sample(fragment: str) -> Path:
    return next(f for f in interop_files() if fragment in f.name)


def central(**extra: str) -> edxml.Edoc:
    """A document of the Government Office as another implementer writes it (built unsigned)."""
    doc = national_axis_edoc()
    doc.extra = dict(extra)
    return doc


def received_by(p, organ_id: str, document_id: str) -> edxml.Edoc:
    with Adapter(p.settings, organ_id, transport=p.transport) as a:
        a.receive()
        return a.document(document_id)


def test_a_national_axis_document_is_distributed_with_its_files_and_flagged_unverified(memory_province) -> None:
    p = memory_province
    path = sample("xml-dc0bdef0")  # 7816/VPCP-TTĐT of the Government Office, placeholder signature
    raw = path.read_bytes()
    original = edxml.parse_tree(safexml.parse(raw))
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        copy = pc.send_outside_copy(raw, [FIN, HOME_AFFAIRS], number="12", notation="SL-UBND")
    route(p)
    assert Message.get(Message.document_id == copy.document_id).state == "accepted"

    doc = received_by(p, FIN, copy.document_id)
    assert doc.sender.organ_id == PC and (doc.code_number, doc.code_notation) == ("12", "SL-UBND")
    assert doc.subject == "Sao lục: V/v kết nối, liên thông phần mềm quản lý văn bản"
    assert "số 7816/VPCP-TTĐT" in doc.content and "Văn phòng Chính phủ" in doc.content
    assert OUTSIDE_NOTE in doc.content  # the copy says its original was not verified
    names = [a.name for a in doc.attachments]
    assert names == [*(a.name for a in original.attachments), "ban-goc.edxml"]
    assert [a.data for a in doc.attachments[:-1]] == [a.data for a in original.attachments]
    assert doc.attachments[-1].data == raw  # the file exactly as the Committee got it
    with pytest.raises(SignatureRejected) as refused:  # a recipient checking it is told it is not verifiable
        open_envelope(raw, load_trust(p.settings))
    assert refused.value.reason == "signature-unverifiable"
    assert received_by(p, HOME_AFFAIRS, copy.document_id).content == doc.content


def test_a_zipped_attachment_is_distributed_unzipped(memory_province) -> None:
    p = memory_province
    raw = sample("resources-edoc_new").read_bytes()  # a Quyết định of the Prime Minister, .doc zipped
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        copy = pc.send_outside_copy(raw, [FIN], number="13", notation="SL-UBND", subject="Sao lục Quyết định")
    route(p)
    doc = received_by(p, FIN, copy.document_id)
    assert doc.subject == "Sao lục Quyết định"
    first = doc.attachments[0]
    assert first.name == "1896_QD-TTg_m_294779.doc" and not first.data.startswith(b"PK\x03\x04")


@pytest.mark.parametrize(
    ("fragment", "reason"),
    [("status_inbox_01", "not-edoc"), ("resources-edoc_revocation", "revoked")],
)
def test_a_status_or_a_revocation_is_not_distributed(memory_province, fragment, reason) -> None:
    p = memory_province
    with Adapter(p.settings, PC, transport=p.transport) as pc, pytest.raises(Refused) as refused:
        pc.send_outside_copy(sample(fragment).read_bytes(), [FIN], number="14", notation="SL")
    assert refused.value.reason == reason
    assert pc.store.Outbox.select().count() == 0  # nothing signed, nothing sent


def test_a_secret_document_never_leaves_the_agency(memory_province) -> None:
    p = memory_province
    raw = edxml.build(central(SecurityLevel="Mật"))
    with Adapter(p.settings, PC, transport=p.transport) as pc, pytest.raises(PolicyRefusal) as refused:
        pc.send_outside_copy(raw, [FIN], number="15", notation="SL")
    assert refused.value.reason == "secret-document"


def test_hostile_outside_files_are_refused_before_anything_is_signed(memory_province) -> None:
    p = memory_province
    good = edxml.build(central())
    with_doctype = good.replace(b"<edXML ", b'<!DOCTYPE edXML [<!ENTITY x "y">]><edXML ', 1)
    not_edxml = b"<html><body>van ban</body></html>"
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        for data, reason in ((with_doctype, "dtd-forbidden"), (not_edxml, "not-edxml"), (b"\xff\xfe", "malformed")):
            with pytest.raises(MalformedEnvelope) as refused:
                pc.send_outside_copy(data, [FIN], number="16", notation="SL")
            assert refused.value.reason == reason
        assert pc.store.Outbox.select().count() == 0


def test_a_file_that_is_not_the_zip_it_claims_is_refused(memory_province) -> None:
    p = memory_province
    doc = central()
    doc.attachments = [
        edxml.Attachment("1", "81-TB.pdf", "application/pdf", zipped=True, _encoded=base64.b64encode(b"%PDF").decode())
    ]
    with Adapter(p.settings, PC, transport=p.transport) as pc, pytest.raises(Refused) as refused:
        pc.send_outside_copy(edxml.build(doc), [FIN], number="16", notation="SL")
    assert refused.value.reason == "bad-attachment" and "81-TB.pdf" in str(refused.value)


def distributed_with(p, name: str, data: bytes, number: str) -> tuple[bytes, edxml.Edoc]:
    """The central decision with one more file ``name`` inside it, distributed to FIN:
    (the outside file's bytes, the copy as FIN received it)."""
    doc = central()
    doc.attachments.append(edxml.Attachment.from_bytes(name, data, "application/pdf", content_id="2"))
    raw = edxml.build(doc)
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        copy = pc.send_outside_copy(raw, [FIN], number=number, notation="SL-UBND")
    route(p)
    return raw, received_by(p, FIN, copy.document_id)


def test_a_file_over_the_inline_limit_travels_by_reference(small_inline) -> None:
    p = small_inline  # files over 64 KiB go in chunks
    big = os.urandom(100_000)
    raw, got = distributed_with(p, "phu-luc.pdf", big, "17")
    plan, original = got.attachments[1], got.attachments[2]
    assert plan.name == "phu-luc.pdf" and plan.external is not None and plan.path.read_bytes() == big
    assert original.name == "ban-goc.edxml" and original.path.read_bytes() == raw


def test_a_scan_over_ten_megabytes_inside_the_file_is_read_and_sent_in_chunks(memory_province) -> None:
    """A national-axis file carries its scans inline: one base64 text node over libxml2's 10 MB."""
    scan = os.urandom(8_000_000)  # 10.7 MB of base64
    _, got = distributed_with(memory_province, "ban-scan.pdf", scan, "18")
    assert [a.name for a in got.attachments] == ["1896-QD-TTg.pdf", "ban-scan.pdf", "ban-goc.edxml"]
    assert got.attachments[1].external is not None and got.attachments[1].path.read_bytes() == scan


def test_a_file_larger_than_may_be_read_whole_is_refused_with_what_to_do(memory_province, tmp_path) -> None:
    p = memory_province
    p.settings = replace(p.settings, limits=replace(p.settings.limits, max_outside_file_bytes=2000))
    path = tmp_path / "qd-1896.edxml"
    path.write_bytes(edxml.build(central()))
    assert path.stat().st_size > 2000
    with Adapter(p.settings, PC, transport=p.transport) as pc, pytest.raises(Refused) as refused:
        pc.send_outside_copy(path, [FIN], number="19", notation="SL")
    assert refused.value.reason == "too-large" and "docbus send" in refused.value.message
    assert pc.store.Outbox.select().count() == 0
