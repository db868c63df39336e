"""The pickup folder an agency's system sends through (adapters.pickup), on the in-memory transport."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

from adapters import Adapter
from adapters.pickup import Pickup
from bus.errors import DocbusError
from tests.unit.test_drop import PDF, take
from tests.unit.test_large_files import DEPT, PC

FIN = "000.00.02.H61"


def leave(
    folder: Path, name: str, header: dict | str, files: dict[str, bytes] | None = None, *, kind: str = "send"
) -> Path:
    """What the agency's system does: the files first, then the header (``kind`` send or status)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in (files or {}).items():
        (folder / file_name).write_bytes(data)
    path = folder / f"{name}.{kind}.json"
    path.write_text(header if isinstance(header, str) else json.dumps(header, ensure_ascii=False), encoding="utf-8")
    return path


def bao_cao(number: str = "12", **changes) -> dict:
    return {
        "to": [PC, FIN],
        "subject": "Báo cáo tháng 11",
        "number": number,
        "notation": "BC-SNV",
        "type": "Báo cáo",
        "files": ["Báo cáo.pdf"],
    } | changes


def outbox_rows(a: Adapter, document_id: str, kind: str = "edoc") -> int:
    Outbox = a.store.Outbox
    return Outbox.select().where((Outbox.kind == kind) & (Outbox.document_id == document_id)).count()


def delivered_bao_cao(p, tmp_path: Path):
    """The department's system sends the báo cáo through its pickup folder; the People's
    Committee's adapter takes it in (and answers 01 on its own).  Returns the sent outcome."""
    folder = tmp_path / "pickup"
    leave(folder, "bc", bao_cao(), {"Báo cáo.pdf": PDF})
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        [sent] = Pickup(folder).work(dept)
    take(p, PC)
    return sent


def test_a_header_and_its_file_are_sent_and_moved_to_sent(memory_province, tmp_path) -> None:
    p = memory_province
    folder = tmp_path / "pickup"
    leave(folder, "bc", bao_cao(), {"Báo cáo.pdf": PDF})
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        [done] = Pickup(folder).work(dept)
    assert (done.name, done.state, done.folder) == ("bc", "sent", folder / "sent" / "bc")
    result = json.loads((done.folder / "result.json").read_text(encoding="utf-8"))
    assert result["document_id"] == done.document_id and result["published"] is True and len(result["digest"]) == 64
    assert sorted(f.name for f in done.folder.iterdir()) == ["Báo cáo.pdf", "bc.send.json", "result.json"]
    assert not list(folder.glob("*.pdf")) and not list(folder.glob("*.send.json"))  # nothing sent twice

    [(item, msg, _raw)] = take(p, PC)
    assert (item.document_id, item.subject, msg.type_name) == (done.document_id, "Báo cáo tháng 11", "Báo cáo")
    assert [(a.name, a.data) for a in msg.attachments] == [("Báo cáo.pdf", PDF)]
    assert [r.organ_id for r in msg.recipients] == [PC, FIN]


@pytest.mark.parametrize(
    ("header", "files", "reason", "words"),
    [
        ("{not json", {}, "bad-job", "not JSON"),
        (bao_cao(subjet="x"), {"Báo cáo.pdf": PDF}, "bad-job", "unknown field(s) subjet"),
        ({"to": [PC]}, {}, "bad-job", "missing subject, number, notation, files"),
        (bao_cao(to=[PC, PC]), {"Báo cáo.pdf": PDF}, "bad-job", f"recipient {PC} is named more than once"),
        (bao_cao(to=[]), {"Báo cáo.pdf": PDF}, "bad-job", '"to" names no recipient'),
        (bao_cao(subject="  "), {"Báo cáo.pdf": PDF}, "bad-job", '"subject" may not be empty'),
        (bao_cao(priority=True), {"Báo cáo.pdf": PDF}, "bad-job", '"priority" is a whole number'),
        (bao_cao(files=["../secret.pdf"]), {}, "bad-job", "not a plain file name"),
        (bao_cao(), {}, "missing-file", "Báo cáo.pdf is not in the pickup folder"),
        (bao_cao(files=["passwd"]), {}, "bad-job", "passwd is a symbolic link"),
        (bao_cao(), {"Báo cáo.pdf": b""}, "empty-file", "Báo cáo.pdf is empty (0 bytes)"),
        # JSON may escape half of a UTF-16 pair, which is no character: the lookups by số,
        # the file names and the edXML would each fail on it in their own way
        (json.dumps(bao_cao(number="12\udcff")), {"Báo cáo.pdf": PDF}, "bad-job", "holds U+DCFF"),
        (json.dumps(bao_cao(files=["\udcff.pdf"])), {}, "bad-job", "holds U+DCFF"),
    ],
)
def test_a_header_that_cannot_be_sent_is_kept_with_its_files_and_reason(
    memory_province, tmp_path, header, files, reason, words
) -> None:
    p = memory_province
    folder = tmp_path / "pickup"
    leave(folder, "bc", header, files)
    if isinstance(header, dict) and header.get("files") == ["passwd"]:
        (folder / "passwd").symlink_to("/etc/passwd")
        files = {"passwd": b""}  # the link is kept with the header
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        [done] = Pickup(folder).work(dept)
        assert dept.pending() == 0 and dept.store.Outbox.select().count() == 0  # nothing signed or sent
    assert (done.state, done.reason, done.folder) == ("refused", reason, folder / "refused" / "bc")
    assert words in done.message
    result = json.loads((done.folder / "result.json").read_text(encoding="utf-8"))
    assert result == {"reason": reason, "message": done.message}
    kept = {f.name for f in done.folder.iterdir()}
    assert kept == {"bc.send.json", "result.json", *files}
    assert not list(folder.glob("*.send.json"))


def test_a_number_already_used_is_refused_and_one_the_hub_refused_is_free(memory_province, tmp_path) -> None:
    p = memory_province
    folder = tmp_path / "pickup"
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        pickup = Pickup(folder)
        leave(folder, "first", bao_cao(files=[]))  # no electronic file: the router refuses it with a 02
        leave(folder, "second", bao_cao(), {"Báo cáo.pdf": PDF})
        os.utime(folder / "second.send.json", (1, 1))  # left earlier: taken first
        second, first = pickup.work(dept)
        assert (second.name, second.state) == ("second", "sent")
        assert (first.name, first.state, first.reason) == ("first", "refused", "number-in-use")

        leave(folder, "third", bao_cao("13", files=[]))
        [third] = pickup.work(dept)
        take(p, PC)
        dept.receive()  # the hub's 02 for the document without its file
        leave(folder, "fourth", bao_cao("13"), {"Báo cáo.pdf": PDF})
        [fourth] = pickup.work(dept)
        assert (third.state, fourth.state, fourth.document_id) == ("sent", "sent", third.document_id)
        assert outbox_rows(dept, third.document_id) == 2


def test_after_a_crash_a_header_in_flight_is_sent_once(memory_province, tmp_path) -> None:
    p = memory_province
    folder = tmp_path / "pickup"
    pickup = Pickup(folder)
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        # signed and in the outbox, then the crash: the header still in .sending, its file not moved
        sent = dept.send([PC, FIN], subject="Báo cáo tháng 11", number="12", notation="BC-SNV", files=[])
        leave(pickup.sending, "done", bao_cao())
        (folder / "Báo cáo.pdf").write_bytes(PDF)
        # sent, its file moved to sent/, then the crash before its header followed
        dept.send([PC], subject="Báo cáo quý", number="15", notation="BC-SNV", files=[])
        leave(pickup.sending, "half", bao_cao("15", files=["Quý.pdf"]))
        # taken, then the crash before it was signed
        leave(pickup.sending, "undone", bao_cao("14", files=["Phụ lục.pdf"]))
        (folder / "Phụ lục.pdf").write_bytes(PDF)
        outcomes = {o.name: o for o in pickup.work(dept)}
        assert outcomes["done"].state == outcomes["undone"].state == outcomes["half"].state == "sent"
        assert outcomes["done"].document_id == sent.document_id and outbox_rows(dept, sent.document_id) == 1
        assert outbox_rows(dept, outcomes["undone"].document_id) == 1
        assert json.loads((folder / "sent" / "done" / "result.json").read_text())["digest"] == sent.digest
        assert (folder / "sent" / "done" / "Báo cáo.pdf").read_bytes() == PDF
        assert not list(pickup.sending.iterdir()) and pickup.work(dept) == []


def test_a_pickup_folder_that_cannot_be_read_stops_the_adapter(memory_province, tmp_path) -> None:
    p = memory_province
    folder = tmp_path / "pickup"
    pickup = Pickup(folder)
    leave(folder, "bc", bao_cao(), {"Báo cáo.pdf": PDF})
    (folder / "refused").rmdir()
    (folder / "refused").write_text("not a folder")
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        pickup.work(dept)  # sent: refused/ is not needed
        leave(folder, "bad", "{")
        with pytest.raises(DocbusError) as exc:
            pickup.work(dept)
    assert exc.value.reason == "local-io" and "pickup folder" in exc.value.message


def test_a_status_header_answers_the_documents_sender(memory_province, tmp_path) -> None:
    p = memory_province
    sent = delivered_bao_cao(p, tmp_path)
    answers = tmp_path / "pc-pickup"
    accepted = {"document_id": sent.document_id, "code": "03", "description": "Đã vào sổ"}
    leave(answers, "tiep-nhan", accepted, kind="status")
    leave(answers, "la", {"document_id": "000.00.09.H61,2026/01/01,1/X", "code": "03"}, kind="status")
    leave(answers, "sai-ma", {"document_id": sent.document_id, "code": "99"}, kind="status")
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        done = {o.name: o for o in Pickup(answers).work(pc)}
        assert outbox_rows(pc, sent.document_id, "status") == 2  # its 01 and this 03
    assert done["tiep-nhan"].state == "sent"
    result = json.loads((done["tiep-nhan"].folder / "result.json").read_text(encoding="utf-8"))
    assert (result["status_code"], result["to"], result["published"]) == ("03", DEPT, True)
    assert (done["la"].state, done["la"].reason) == ("refused", "not-found")
    assert (done["sai-ma"].state, done["sai-ma"].reason) == ("refused", "bad-job")
    statuses = [(m.status_code, m.description) for _, m, _ in take(p, DEPT) if m.kind == "status"]
    assert ("03", "Đã vào sổ") in statuses


def test_after_a_crash_a_status_in_flight_is_sent_once(memory_province, tmp_path) -> None:
    p = memory_province
    sent = delivered_bao_cao(p, tmp_path)
    answers = Pickup(tmp_path / "pc-pickup")
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.send_status(sent.document_id, DEPT, "04", "Phân công")  # in the outbox, then the crash
        leave(answers.sending, "phan-cong", {"document_id": sent.document_id, "code": "04"}, kind="status")
        leave(answers.sending, "xu-ly", {"document_id": sent.document_id, "code": "05"}, kind="status")  # not sent
        done = {o.name: o.state for o in answers.work(pc)}
        assert done == {"phan-cong": "sent", "xu-ly": "sent"}
        assert outbox_rows(pc, sent.document_id, "status") == 3  # 01, 04 once, 05
        assert pc.answered(sent.document_id, "05") is not None and pc.answered(sent.document_id, "06") is None


def test_a_copy_header_distributes_a_received_document_under_the_agencys_own_number(memory_province, tmp_path) -> None:
    """Sao lục through the folder: the People's Committee's system names what it received."""
    p = memory_province
    original = delivered_bao_cao(p, tmp_path).document_id  # the Committee has taken it in
    folder = tmp_path / "pc-pickup"
    copy = {"copy_of": original, "to": [FIN], "number": "3", "notation": "SL-UBND", "files": ["Công văn.pdf"]}
    leave(folder, "sl3", copy, {"Công văn.pdf": PDF})
    leave(folder, "sai", copy | {"number": "4", "type": "Quyết định"})  # a copy's type is the original's
    leave(folder, "la", copy | {"number": "5", "copy_of": f"{DEPT},2020/01/01,1/X", "files": []})
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        done = {o.name: o for o in Pickup(folder).work(pc)}
    assert done["sl3"].state == "sent" and done["sl3"].document_id.endswith(",3/SL-UBND")
    assert (done["sai"].state, done["sai"].reason) == ("refused", "bad-job")
    assert "unknown field(s) type in a copy (copy_of)" in done["sai"].message
    assert (done["la"].state, done["la"].reason) == ("refused", "not-found")
    [(_, msg, _)] = [h for h in take(p, FIN) if h[0].document_id == done["sl3"].document_id]
    assert msg.sender.organ_id == PC
    assert msg.subject == "Sao lục: Báo cáo tháng 11" and msg.type_name == "Báo cáo"
    assert [a.name for a in msg.attachments] == ["Công văn.pdf", "Báo cáo.pdf", "ban-goc.edxml"]


def test_a_copy_of_file_header_distributes_a_document_from_outside_the_bus(memory_province, tmp_path) -> None:
    """The People's Committee's system leaves what came over the national axis, with a header."""
    from adapters.adapter import OUTSIDE_NOTE
    from bus.demo import national_axis_document

    p = memory_province
    folder = tmp_path / "pc-pickup"
    copy = {"copy_of_file": "81-TB-VPCP.edxml", "to": [FIN], "number": "6", "notation": "SL-UBND"}
    leave(folder, "tb81", copy, {"81-TB-VPCP.edxml": national_axis_document()})
    leave(folder, "hai-nguon", copy | {"number": "7", "copy_of": "000.00.01.H61,2020/01/01,1/X"})
    leave(folder, "thieu", copy | {"number": "8", "copy_of_file": "khong-co.edxml"})
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        done = {o.name: o for o in Pickup(folder).work(pc)}
    assert done["tb81"].state == "sent" and done["tb81"].document_id.endswith(",6/SL-UBND")
    kept = sorted(f.name for f in done["tb81"].folder.iterdir())
    assert kept == ["81-TB-VPCP.edxml", "result.json", "tb81.send.json"]  # the file moves with its header
    assert (done["hai-nguon"].reason, done["thieu"].reason) == ("bad-job", "missing-file")
    assert "not both" in done["hai-nguon"].message
    [(_, msg, _)] = [h for h in take(p, FIN) if h[0].document_id == done["tb81"].document_id]
    assert msg.subject.startswith("Sao lục: Quyết định ban hành Quy chế") and OUTSIDE_NOTE in msg.content
    assert [a.name for a in msg.attachments] == ["1896-QD-TTg.pdf", "ban-goc.edxml"]


def test_a_file_named_with_its_letters_composed_the_other_way_is_found(memory_province, tmp_path) -> None:
    """The header says "Báo cáo.pdf" precomposed; a Mac wrote the file with combining marks."""
    p = memory_province
    folder = tmp_path / "pickup"
    written = unicodedata.normalize("NFD", "Báo cáo.pdf")
    assert written != "Báo cáo.pdf"
    leave(folder, "bc", bao_cao(), {written: PDF})
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        [done] = Pickup(folder).work(dept)
    assert done.state == "sent", done.message
    assert sorted(f.name for f in done.folder.iterdir()) == sorted([written, "bc.send.json", "result.json"])
    [(_item, msg, _raw)] = take(p, PC)
    assert [(a.name, a.data) for a in msg.attachments] == [("Báo cáo.pdf", PDF)]  # sent precomposed
