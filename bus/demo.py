"""``docbus demo``: a small province on the real broker, end to end.

It is also the shortest complete example of the Python API: set up the province, run a
router, send through adapters, answer statuses, read the trace from the archive.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable

from adapters import Adapter
from bus import edxml, province, topology
from bus.archive import Archive
from bus.config import Settings
from bus.edxml import vn_text
from bus.errors import NotFound
from bus.router import Router, load_trust
from bus.topology import Names
from bus.transport import AmqpTransport

PEOPLES_COMMITTEE = "000.00.00.H61"
AGENCIES = [
    (PEOPLES_COMMITTEE, "UBND tỉnh Vĩnh Long", None),
    ("000.00.01.H61", "Sở Nội vụ tỉnh Vĩnh Long", PEOPLES_COMMITTEE),
    ("000.00.02.H61", "Sở Tài chính tỉnh Vĩnh Long", PEOPLES_COMMITTEE),
    ("000.00.11.H61", "UBND huyện Long Hồ", PEOPLES_COMMITTEE),
]
SAMPLE_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj "
    b"3 0 obj<</Type/Page/MediaBox[0 0 595 842]/Parent 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


class RouterThread:
    """A router in a background thread with its own connection (tests and the demo use it)."""

    def __init__(self, settings: Settings, archive: Archive, hub: object) -> None:
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.router: Router | None = None
        self._args = (settings, archive, hub)
        self.thread = threading.Thread(target=self._run, daemon=True, name="docbus-router")

    def _run(self) -> None:
        settings, archive, hub = self._args
        try:
            transport = AmqpTransport(settings.amqp_url)
            self.router = Router(settings, transport, archive, load_trust(settings), hub)  # type: ignore[arg-type]
            try:
                self.router.run(stop=self._stop.is_set)
            finally:
                transport.close()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> RouterThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)


def run_demo(
    settings: Settings, *, keep: bool = False, echo: Callable[[str], None] = print, timeout: float = 60.0
) -> bool:
    if settings.home.exists():
        shutil.rmtree(settings.home)
    names = Names(settings.namespace)
    archive = Archive(settings.archive_url)
    setup = AmqpTransport(settings.amqp_url)
    full = topology.core(names)
    for code, _, _ in AGENCIES:
        full = full + topology.agency(names, code)
    setup.delete(full)  # a clean slate on the broker for this namespace
    prov, _ = province.init(settings, archive, setup)
    for code, name, parent in AGENCIES:
        province.add_agency(settings, archive, setup, code, name, parent)
        echo(f"agency {code}  {name}")
    pdf = settings.home / "cong-van-ket-noi.pdf"
    pdf.write_bytes(SAMPLE_PDF)
    decision = settings.home / "quyet-dinh-112.pdf"
    decision.write_bytes(SAMPLE_PDF.replace(b"595 842", b"842 595"))

    adapters = {code: Adapter(settings, code) for code, _, _ in AGENCIES}
    expected: dict[str, set[str]] = {}
    with RouterThread(settings, archive, prov.hub) as rt:
        dept = adapters["000.00.01.H61"]
        first = dept.send(
            [PEOPLES_COMMITTEE],
            subject="Công văn V/v kết nối, liên thông phần mềm quản lý văn bản",
            number="125",
            notation="SNV-VP",
            files=[pdf],
        )
        echo(f"sent      {first.document_id} (Sở Nội vụ -> UBND tỉnh, with a PDF)")
        expected[first.document_id] = {PEOPLES_COMMITTEE}
        others = [code for code, _, _ in AGENCIES if code != PEOPLES_COMMITTEE]
        second = adapters[PEOPLES_COMMITTEE].send(
            others,
            subject="Quyết định ban hành Đề án 112 về trao đổi văn bản điện tử",
            number="112",
            notation="QĐ-UBND",
            type_name="Quyết định",
            priority=1,
            files=[decision],
        )
        echo(f"sent      {second.document_id} (UBND tỉnh -> {len(others)} agencies at once)")
        expected[second.document_id] = set(others)
        district = "000.00.11.H61"
        copies: dict[str, str] = {}  # the original's DocumentId -> its sao lục's
        central = adapters[PEOPLES_COMMITTEE].send_outside_copy(
            national_axis_document(), others, number="06", notation="SL-UBND"
        )
        echo(f"sent      {central.document_id} (sao lục of the Prime Minister's decision from the national")
        echo("          axis -> the same agencies, flagged as not verified on this bus)")
        expected[central.document_id] = set(others)

        answered: set[tuple[str, str]] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _complete(archive, expected):
            for code, a in adapters.items():
                for item in a.receive(idle_timeout=0.2):
                    if item.kind == "edoc" and (item.document_id, code) not in answered:
                        answered.add((item.document_id, code))
                        a.send_status(item.document_id, item.sender, "03", "Văn thư đã vào sổ văn bản đến")
                        echo(f"received  {item.document_id} at {code}; answered 01 then 03")
                        if item.document_id == first.document_id and code == PEOPLES_COMMITTEE:
                            copy = a.send_copy(first.document_id, [district], number="05", notation="SL-UBND")
                            copies[first.document_id] = copy.document_id
                            expected[copy.document_id] = {district}
                            echo(f"sent      {copy.document_id} (sao lục of it -> {district}, the original inside)")
            if rt.error is not None:
                raise rt.error
        ok = _complete(archive, expected)
        senders = {first.document_id: adapters["000.00.01.H61"]}
        senders |= {
            doc: adapters[PEOPLES_COMMITTEE] for doc in (second.document_id, central.document_id, *copies.values())
        }
        # the senders' own inboxes must hold every status too, and the data centre's
        # receipts, which its router sends every second
        while True:
            for a in adapters.values():
                a.receive(idle_timeout=0.3)
            if time.monotonic() > deadline or all(_relayed_at(a, doc) for doc, a in senders.items()):
                break
    if len(copies) != 1:
        echo("MISSING: the People's Committee never had the công văn to distribute")
        ok = False
    for doc, a in senders.items():
        got = {(i.sender, i.status_code) for i in a.inbox("status") if i.document_id == doc}
        want = {(r, c) for r in expected[doc] for c in ("01", "03")}
        if not want <= got:
            echo(f"MISSING at the sender {a.organ_id}: {sorted(want - got)}")
            ok = False
        relayed = _relayed_at(a, doc)
        if relayed:
            echo(f"receipt   {doc} at {a.organ_id}: relayed by the data centre {edxml.vn_text(relayed)} (UTC+7)")
        else:
            echo(f"MISSING at the sender {a.organ_id}: the data centre's receipt for {doc}")
            ok = False
    echo("")
    for doc in expected:
        _print_trace(archive, doc, echo)
    for a in adapters.values():
        a.close()
    if not keep:
        setup.delete(full)
        province.remove_broker_users(settings, archive)
    setup.close()
    echo("demo OK: every delivery, status and receipt arrived" if ok else "demo FAILED")
    return ok


def national_axis_document() -> bytes:
    """A central document as the national document axis hands it to the province: edXML from
    the Government Office with a placeholder signature, as in the real samples."""
    return edxml.to_bytes(edxml.build_tree(national_axis_edoc(), signature_placeholder=True))


def national_axis_edoc() -> edxml.Edoc:
    """The Prime Minister's decision of :func:`national_axis_document`, to build variants of."""
    now = edxml.now_vn()
    return edxml.Edoc(
        sender=edxml.Organ("000.00.00.G22", "Văn phòng Chính phủ"),
        recipients=[edxml.Organ(PEOPLES_COMMITTEE, "UBND tỉnh Vĩnh Long")],
        document_id=f"000.00.00.G22,{edxml.fmt_date(now.date())},1896/QĐ-TTg",
        code_number="1896",
        code_notation="QĐ-TTg",
        subject="Quyết định ban hành Quy chế gửi, nhận văn bản điện tử giữa các cơ quan hành chính nhà nước",
        promulgation_place="Hà Nội",
        promulgation_date=edxml.fmt_date(now.date()),
        type_name="Quyết định",
        attachments=[edxml.Attachment.from_bytes("1896-QD-TTg.pdf", SAMPLE_PDF, "application/pdf", zipped=True)],
    )


def _complete(archive: Archive, expected: dict[str, set[str]]) -> bool:
    for doc, recipients in expected.items():
        try:
            t = archive.trace(doc)
        except NotFound:  # the router has not archived it yet
            return False
        sub = t["submissions"][-1]
        for r in sub["recipients"]:
            codes = {s["code"] for s in r["statuses"]}
            if r["organ_id"] in recipients and not {"01", "03"} <= codes:
                return False
        if {r["organ_id"] for r in sub["recipients"]} != recipients:
            return False
    return True


def _print_trace(archive: Archive, doc: str, echo: Callable[[str], None]) -> None:
    t = archive.trace(doc)
    for sub in t["submissions"]:
        archived = vn_text(sub["received_at"])
        told = f"; receipt to the sender {vn_text(sub['receipted_at'])[11:]}" if sub["receipted_at"] else ""
        echo(f"trace {doc}: “{sub['subject']}” from {sub['sender']}, archived {archived} (UTC+7){told}")
        for r in sub["recipients"]:
            statuses = ", ".join(f"{s['code']} at {vn_text(s['received_at'])[11:]}" for s in r["statuses"])
            delivered = vn_text(r["delivered_at"])[11:] or "no"
            echo(f"  -> {r['organ_id']}: delivered {delivered}; {statuses}")


def _relayed_at(adapter: Adapter, document_id: str) -> dt.datetime | None:
    """When the data centre relayed the sender's document, from its receipt (None: not yet)."""
    return next((i.accepted_at for i in adapter.sent(document_id=document_id) if i.document_id == document_id), None)
