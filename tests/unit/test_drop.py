"""The drop folder an agency's system reads (adapters.drop), on the in-memory transport."""

from __future__ import annotations

import hashlib
import json

import pytest

from adapters import Adapter, drop
from bus import compose
from bus.edxml import Attachment, Organ
from bus.filenames import MAX_NAME_BYTES, safe_name
from bus.router import Router, load_trust
from tests.unit.test_large_files import DEPT, PC, send_big

PDF = b"%PDF-1.4\n% to trinh\n%%EOF\n"
LONG = "Tờ trình về việc phê duyệt kế hoạch chuyển đổi số của tỉnh Vĩnh Long giai đoạn 2026–2030 " * 3


def take(p, organ: str) -> list[tuple]:
    """Run the router, then let ``organ``'s adapter take its deliveries: (item, message, raw) each."""
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()
    handed: list[tuple] = []
    with Adapter(p.settings, organ, transport=p.transport, on_receive=lambda *args: handed.append(args)) as a:
        a.receive()
    return handed


def send_cong_van(p, number: str) -> None:
    """The department sends the People's Committee a công văn with one PDF."""
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        dept.submit(
            compose.new_edoc(
                Organ(DEPT, "Sở Nội vụ"),
                [Organ(PC)],
                subject="Công văn",
                number=number,
                notation="SNV",
                attachments=[Attachment.from_bytes("cv.pdf", PDF, "application/pdf")],
            )
        )


def test_every_file_header_and_envelope_land_in_the_folder(memory_province, tmp_path) -> None:
    p = memory_province
    attachments = [
        Attachment.from_bytes("Tờ trình.pdf", PDF, "application/pdf"),
        Attachment.from_bytes("Tờ trình.pdf", PDF + b"2", "application/pdf"),  # same name, other file
        Attachment.from_bytes("../../etc/cron.d/x.pdf", b"%PDF-1.4 y", "application/pdf"),
        Attachment.from_bytes(LONG + ".docx", b"PK docx", "application/octet-stream"),
        Attachment.from_bytes("ban-goc.EDXML", b"<edXML/>", "application/xml"),  # not taken for a message
    ]
    edoc = compose.new_edoc(
        Organ(DEPT, "Sở Nội vụ"),
        [Organ(PC)],
        subject="Tờ trình V/v chuyển đổi số",
        number="5",
        notation="TTr-SNV",
        attachments=attachments,
    )
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        dept.submit(edoc)
    [(item, msg, raw)] = take(p, PC)
    folder = tmp_path / "drop"
    envelope = drop.write(folder, item.digest, msg, raw)

    key = item.digest[:16]
    assert envelope == folder / f"{key}.edxml" and envelope.read_bytes() == raw
    header = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    assert header["subject"] == "Tờ trình V/v chuyển đổi số" and header["signature"] == "verified"
    assert header["code"] == {"number": "5", "notation": "TTr-SNV"}
    files = [a["file"] for a in header["attachments"]]
    assert files[:3] == [f"{key}-Tờ trình.pdf", f"{key}-Tờ trình-2.pdf", f"{key}-x.pdf"]
    assert files[3].endswith(".docx") and len(files[3].encode()) <= 16 + 1 + MAX_NAME_BYTES
    assert files[4] == f"{key}-ban-goc.EDXML.xml" and [f.name for f in folder.glob("*.edxml")] == [envelope.name]
    for a, sent in zip(header["attachments"], attachments, strict=True):
        data = (folder / a["file"]).read_bytes()
        assert data == sent.data and hashlib.sha256(data).hexdigest() == a["sha256"]
    assert sorted(f.name for f in folder.iterdir()) == sorted([*files, f"{key}.json", f"{key}.edxml"])  # no .part
    with Adapter(p.settings, PC, transport=p.transport) as pc:  # 'docbus inbox save' names files the same way
        saved = pc.save_attachments(msg.document_id, tmp_path / "saved")
    assert [f.name for f in saved] == [*(f.removeprefix(f"{key}-") for f in files[:4]), "ban-goc.EDXML"]
    assert [f.read_bytes() for f in saved] == [a.data for a in attachments]


def test_a_large_file_is_copied_from_the_store_beside_its_envelope(small_inline, tmp_path) -> None:
    p = small_inline
    sent, digest = send_big(p, tmp_path, "7", subject="Bản đồ quy hoạch")
    [(item, msg, raw)] = take(p, PC)
    envelope = drop.write(tmp_path / "drop", item.digest, msg, raw)
    header = json.loads(envelope.with_suffix(".json").read_text(encoding="utf-8"))
    [a] = header["attachments"]
    assert header["document_id"] == sent.document_id and a["sha256"] == digest
    assert hashlib.sha256((envelope.parent / a["file"]).read_bytes()).hexdigest() == digest


def test_a_status_lands_with_its_header_and_no_files(memory_province, tmp_path) -> None:
    p = memory_province
    send_cong_van(p, "6")
    take(p, PC)  # PC answers 01
    [(item, msg, raw)] = take(p, DEPT)
    envelope = drop.write(tmp_path / "drop", item.digest, msg, raw)
    header = json.loads(envelope.with_suffix(".json").read_text(encoding="utf-8"))
    assert (header["kind"], header["status_code"], header["attachments"]) == ("status", "01", [])
    assert sorted(f.suffix for f in envelope.parent.iterdir()) == [".edxml", ".json"]


def test_names_from_the_sender_stay_one_harmless_name() -> None:
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\a\\Công văn.pdf") == "Công văn.pdf"
    assert safe_name("a\x00b\nc.pdf") == "a_b_c.pdf"
    assert safe_name("..") == safe_name("") == safe_name(" / ") == "file"
    long = safe_name("Quyết định " * 40 + ".pdf")
    assert long.endswith(".pdf") and len(long.encode()) <= MAX_NAME_BYTES
    assert safe_name("ồ" * 300).encode().decode() == "ồ" * (MAX_NAME_BYTES // len("ồ".encode()))


def test_a_failing_agency_system_loses_nothing_and_is_not_called_a_broker_fault(memory_province, tmp_path) -> None:
    from bus.errors import BrokerUnavailable, HandOffFailed

    p = memory_province
    send_cong_van(p, "8")
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()

    def disk_full(item, msg, raw):
        raise OSError(28, "No space left on device")

    with Adapter(p.settings, PC, transport=p.transport, on_receive=disk_full) as pc:
        try:
            pc.receive()
            raise AssertionError("the failure was swallowed")
        except BrokerUnavailable as exc:  # what an OSError inside the consumer used to become
            raise AssertionError(f"blamed on the broker: {exc}") from exc
        except HandOffFailed as exc:
            assert "No space left on device" in exc.message and "handed again" in exc.message
        assert [i.state for i in pc.inbox("edoc")] == ["new"]  # stored, acked, not handed
    handed: list = []
    with Adapter(p.settings, PC, transport=p.transport, on_receive=lambda *a: handed.append(a)) as pc:
        assert pc.hand_pending() == 1 and [i.state for i in pc.inbox("edoc")] == ["handed"]
    assert [item.subject for item, _, _ in handed] == ["Công văn"]


def test_a_stored_copy_altered_on_disk_is_marked_invalid_and_the_rest_still_handed(memory_province) -> None:
    """One row changed on disk (a bad sector, a hand edit) must not stop an agency's intake:
    it is kept as invalid with the reason, and what follows it is handed over."""
    from bus.errors import HandOffFailed

    p = memory_province
    send_cong_van(p, "8")
    send_cong_van(p, "9")
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()

    def down(item, msg, raw):
        raise OSError(5, "Input/output error")

    with Adapter(p.settings, PC, transport=p.transport, on_receive=down) as pc:
        with pytest.raises(HandOffFailed):
            pc.receive()
        Inbox = pc.store.Inbox
        first = Inbox.select().order_by(Inbox.id).first()
        Inbox.update(raw=bytes(first.raw).replace("Công văn".encode(), "Công vân".encode(), 1)).where(
            Inbox.id == first.id
        ).execute()
    handed: list = []
    with Adapter(p.settings, PC, transport=p.transport, on_receive=lambda *a: handed.append(a)) as pc:
        pc.hand_pending()
        states = {i.document_id: (i.state, i.reason) for i in pc.inbox("edoc")}
    assert sorted(s for s, _ in states.values()) == ["handed", "invalid"]
    [reason] = [r for s, r in states.values() if s == "invalid"]
    assert reason.startswith("[signature-invalid] stored copy no longer verifies")
    assert len(handed) == 1


def test_a_clerks_listing_does_not_take_a_document_away_from_the_running_adapter(memory_province, tmp_path) -> None:
    """`docbus inbox` while `docbus adapter run --drop` runs: the listing stores and answers
    what it took, and the running adapter still writes it to the drop folder."""
    p = memory_province
    send_cong_van(p, "41")
    Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub).run()
    folder = tmp_path / "drop"
    folder.mkdir()
    rounds: list[int] = []

    def clerk_looks() -> bool:  # the first round of the running adapter: a clerk lists the inbox
        if not rounds:
            with Adapter(p.settings, PC, transport=p.transport) as clerk:
                [taken] = clerk.receive(idle_timeout=0.1, hand=False)
                assert taken.state == "new"
        rounds.append(1)
        return False

    written: list[str] = []
    with Adapter(
        p.settings,
        PC,
        transport=p.transport,
        on_receive=lambda item, msg, raw: written.append(drop.write(folder, item.digest, msg, raw).name),
    ) as system:
        system.run(idle_exit=0.3, pickup=clerk_looks)
        [item] = system.inbox("edoc")
    assert len(written) == 1 and (folder / written[0]).is_file()
    assert item.state == "handed" and item.answered == "01"


def test_saving_into_one_folder_keeps_every_documents_file(memory_province, tmp_path) -> None:
    """A clerk saves every document into one folder, and many name their scan alike."""
    p = memory_province
    folder = tmp_path / "van-ban-den"
    folder.mkdir()
    (folder / "cv.pdf").write_bytes(b"the clerk's own file")
    for number, data in (("21", PDF), ("22", PDF + b"another")):
        with Adapter(p.settings, DEPT, transport=p.transport) as dept:
            dept.submit(
                compose.new_edoc(
                    Organ(DEPT, "Sở Nội vụ"), [Organ(PC)], subject="Công văn", number=number, notation="SNV",
                    attachments=[Attachment.from_bytes("cv.pdf", data, "application/pdf")],
                )
            )  # fmt: skip
    [(first, *_), (second, *_)] = take(p, PC)
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        saved = [pc.save_attachments(item.document_id, folder) for item in (first, second, first)]
    assert [[f.name for f in paths] for paths in saved] == [["cv-2.pdf"], ["cv-3.pdf"], ["cv-2.pdf"]]  # again: as is
    assert (folder / "cv.pdf").read_bytes() == b"the clerk's own file"
    assert (folder / "cv-2.pdf").read_bytes() == PDF and (folder / "cv-3.pdf").read_bytes() == PDF + b"another"
    assert sorted(f.name for f in folder.iterdir()) == ["cv-2.pdf", "cv-3.pdf", "cv.pdf"]  # no .part left
