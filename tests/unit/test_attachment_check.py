"""``edxml.check_attachments``: every file inside an envelope decoded once, bounded in all,
and not held in memory beyond a small allowance per envelope."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import pytest

from bus import edxml, safexml
from bus.errors import SchemaViolation
from tests.helpers import edoc


def zipped_files(*sizes: int) -> edxml.Edoc:
    """A document whose files travel zipped, parsed back as a receiver reads it."""
    msg = edoc("000.00.00.H61", ["000.00.01.H61"], files=False)
    msg.attachments = [
        edxml.Attachment.from_bytes(f"phu-luc-{i}.pdf", bytes([i]) * n, "application/pdf", zipped=True)
        for i, n in enumerate(sizes, start=1)
    ]
    return edxml.parse_tree(safexml.parse(edxml.build(msg)))


def test_sizes_and_digests_are_kept_and_only_a_small_part_of_the_bytes() -> None:
    msg = zipped_files(*([200_000] * 6))
    edxml.check_attachments(msg, 64 * 1024 * 1024)
    held = sum(len(a._data or b"") for a in msg.attachments)
    assert 0 < held <= edxml.KEEP_DECODED_BYTES  # six files of 200 KB decoded, one kept
    for i, a in enumerate(msg.attachments, start=1):
        assert (a.size, a.sha256) == (200_000, hashlib.sha256(bytes([i]) * 200_000).hexdigest())
        assert a.data == bytes([i]) * 200_000  # decoded again when someone reads it


def test_the_files_of_one_envelope_are_bounded_together() -> None:
    msg = zipped_files(600_000, 600_000)  # each under the bound, not both
    with pytest.raises(SchemaViolation, match="decode to more than 1000000 bytes in all") as refused:
        edxml.check_attachments(msg, 1_000_000)
    assert refused.value.reason == "attachment-too-large"
    edxml.check_attachments(zipped_files(600_000, 300_000), 1_000_000)


def test_a_zip_of_two_files_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.pdf", b"%PDF a")
        zf.writestr("b.pdf", b"%PDF b")
    msg = edoc("000.00.00.H61", ["000.00.01.H61"], files=False)
    two = base64.b64encode(buf.getvalue()).decode()
    msg.attachments = [edxml.Attachment("cid:1", "a.pdf", "application/pdf", zipped=True, _encoded=two)]
    parsed = edxml.parse_tree(safexml.parse(edxml.build(msg)))
    with pytest.raises(SchemaViolation, match="holds one file, found 2"):
        edxml.check_attachments(parsed, 64 * 1024 * 1024)


def test_the_router_decodes_each_file_once(memory_province, monkeypatch) -> None:
    """The gate decodes; the archive uses the size and digest it kept (a 300 KB file is not held)."""
    from bus import compose
    from bus.archive import AttachmentRecord, Message
    from bus.router import Router, load_trust
    from tests.helpers import identity

    p = memory_province
    msg = edoc("000.00.00.H61", ["000.00.01.H61"], files=False)
    scan = b"%PDF-1.4 " + bytes(300_000)
    msg.attachments = [edxml.Attachment.from_bytes("scan.pdf", scan, "application/pdf", zipped=True)]
    data = compose.sign(msg, identity(p.settings, "000.00.00.H61"))
    calls: list[str] = []
    real = edxml._decode

    def counted(text: str, zipped: bool, name: str, limit: int) -> bytes:
        calls.append(name)
        return real(text, zipped, name, limit)

    monkeypatch.setattr(edxml, "_decode", counted)
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    out = router.process(data, routing_key="edoc.000.00.00.H61")
    assert out.state == "accepted" and calls == ["scan.pdf"]
    record = AttachmentRecord.get(AttachmentRecord.message == Message.get(Message.digest == out.digest))
    assert (record.size, record.sha256) == (len(scan), hashlib.sha256(scan).hexdigest())
