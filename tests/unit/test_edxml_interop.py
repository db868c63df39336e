"""The real edXML samples of two independent implementers: parse, validate, round-trip."""

from __future__ import annotations

import pytest

from bus import edxml, safexml, schema
from bus.errors import MalformedEnvelope, SchemaViolation
from tests.conftest import interop_files

MALFORMED = "vnpt-example__resources-edoc.edxml"
FILES = [f for f in interop_files() if f.name != MALFORMED]


def load(path):
    return safexml.parse(path.read_bytes())


def test_there_are_samples_of_both_kinds() -> None:
    kinds = {edxml.parse_tree(load(f)).kind for f in FILES}
    assert kinds == {"edoc", "status"}
    assert len(FILES) >= 18


def test_malformed_sample_is_refused_with_a_clear_error() -> None:
    path = next(f for f in interop_files() if f.name == MALFORMED)
    with pytest.raises(MalformedEnvelope) as info:
        safexml.parse(path.read_bytes())
    assert "line" in str(info.value) and "From" in str(info.value)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_wellformed_sample_passes_the_lenient_schema(path) -> None:
    schema.validate(load(path), "lenient")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_samples_fail_the_strict_profile(path) -> None:
    # placeholder signatures in edXML's namespace, non-QCVN ids: never acceptable on this bus
    with pytest.raises(SchemaViolation):
        schema.validate(load(path), "strict")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_round_trip_keeps_header_and_attachment_bytes(path) -> None:
    first = edxml.parse_tree(load(path))
    rebuilt = edxml.build(first)
    second = edxml.parse_tree(safexml.parse(rebuilt))
    a, b = edxml.summary(first), edxml.summary(second)
    a.pop("signature"), b.pop("signature")
    assert a == b
    if first.kind == "edoc":
        assert [x.data for x in first.attachments] == [x.data for x in second.attachments]
        assert first.business == second.business
        assert first.response_for == second.response_for


def test_zipped_attachment_is_unzipped() -> None:
    path = next(f for f in FILES if f.name.startswith("vnpt-example__resources-edoc_new"))
    edoc = edxml.parse_tree(load(path))
    att = edoc.attachments[0]
    assert att.zipped and att.name == "1896_QD-TTg_m_294779.doc"
    assert len(att.data) > 0 and not att.data.startswith(b"PK\x03\x04")


def test_header_fields_are_read_with_diacritics() -> None:
    path = next(f for f in FILES if "xml-dc0bdef0" in f.name)
    edoc = edxml.parse_tree(load(path))
    assert edoc.document_id == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert [o.organ_id for o in edoc.recipients] == ["000.00.00.H41", "000.00.00.H14", "000.00.00.G17"]
    assert edoc.sender.name == "Văn phòng Chính phủ"
    assert edoc.subject == "V/v kết nối, liên thông phần mềm quản lý văn bản"
    assert edoc.code_notation == "VPCP-TTĐT"
    assert edoc.signature == "placeholder"


def test_statuses_are_read() -> None:
    codes = {edxml.parse_tree(load(f)).status_code for f in FILES if "status" in f.name}
    assert {"01", "02", "03", "04", "05", "06", "13", "15", "16"} <= codes


def test_children_in_any_order() -> None:
    path = next(f for f in FILES if "status_inbox_01" in f.name)
    root = load(path)
    mh = root.find(f".//{{{edxml.NS}}}MessageHeader")
    mh[:] = list(reversed(list(mh)))
    status = edxml.parse_tree(root)
    assert status.status_code == "01" and status.sender.organ_id == "000.00.00.H41"


def test_non_edxml_root_is_refused() -> None:
    with pytest.raises(MalformedEnvelope) as info:
        edxml.parse_tree(safexml.parse(b"<html><body/></html>"))
    assert info.value.reason == "not-edxml"


def test_built_messages_lay_out_like_the_samples() -> None:
    path = next(f for f in FILES if f.name.startswith("vnpt-example__resources-edoc_new"))
    out = edxml.build(edxml.parse_tree(load(path)))
    assert out.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">'
    )
    assert b'<edXML:edXMLEnvelope xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">' in out
    assert b"\n  <AttachmentEncoded>" in out
    assert "<edXML:Subject>V/v kết nối".encode() in out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_xmlschema_agrees_and_names_the_path(path) -> None:
    root = load(path)
    assert schema.explain(root, "lenient") is None
    assert schema.explain(root, "strict").startswith("/edXML/")
