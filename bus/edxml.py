"""edXML (QCVN 102:2016): the data model, the parser and the builder.

The builder emits exactly the layout of the official samples: root ``edXML`` with the
default namespace, an ``edXML:``-prefixed envelope, ``AttachmentEncoded`` outside the
envelope, dates ``yyyy/MM/dd`` and timestamps ``yyyy/MM/dd HH:mm:ss``.  The parser reads
by namespace and local name, in any child order, and never trusts its input: it takes a
tree that :mod:`bus.safexml` produced.  Nothing here checks signatures; see
:mod:`bus.envelope` for the path that only lets verified trees through.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import lzma
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lxml import etree

from bus.blobs import EXT_NS, External
from bus.config import Limits
from bus.errors import MalformedEnvelope, SchemaViolation

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
DATE_FORMAT = "%Y/%m/%d"
TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S"

PRIORITIES = {0: "thường", 1: "khẩn", 2: "thượng khẩn", 3: "hỏa tốc", 4: "hỏa tốc hẹn giờ"}
STATUS_CODES = {
    "01": "Đã đến",
    "02": "Từ chối tiếp nhận",
    "03": "Đã tiếp nhận",
    "04": "Phân công",
    "05": "Đang xử lý",
    "06": "Hoàn thành",
    "13": "Đề nghị thu hồi",
    "15": "Đồng ý thu hồi/cập nhật",
    "16": "Từ chối thu hồi/cập nhật",
}
BUSINESS_DOC_TYPES = {0: "Văn bản mới", 1: "Thu hồi", 2: "Cập nhật", 3: "Thay thế"}


def nfc(text: str) -> str:
    """``text`` with its Vietnamese letters precomposed (Unicode NFC, "dựng sẵn").

    Why: a clerk's typing tool may be set to "Unicode tổ hợp" (a base letter followed by
    combining marks, NFD), as are file names from a Mac.  Both look the same, but an exact
    comparison tells them apart: a type name or a file name typed one way is not found when
    searched the other way.  What this bus writes, and the archive columns that are searched
    exactly, are NFC; signed bytes received from elsewhere are kept as they came."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


# half of a UTF-16 pair, alone: no character of any text (how Python carries undecodable bytes)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def not_utf8(text: str) -> str:
    """The first byte of ``text`` that was not UTF-8 where it came from (a command line, a
    file name), as 0xNN; U+XXXX for any other lone surrogate; '' if none.

    Python hands such bytes over as lone surrogates (U+DC80-U+DCFF), which no database, file
    format or XML can carry: a terminal, a script or a Windows share still writing Vietnamese
    in TCVN3, VNI or Windows-1258 sends them."""
    found = LONE_SURROGATE.search(text)
    if found is None:
        return ""
    o = ord(found.group())
    return f"0x{o - 0xDC00:02X}" if 0xDC80 <= o <= 0xDCFF else f"U+{o:04X}"


def show_not_utf8(text: str) -> str:
    """``text`` with what was not UTF-8 in it shown as U+FFFD (�), to print in an error."""
    return LONE_SURROGATE.sub("\ufffd", text)


def status_note(code: str, description: str | None) -> str:
    """What a status says beyond its code's own name (why a recall was refused, a register
    number), or '' when its Description is just that name."""
    said = (description or "").strip()
    return "" if said == STATUS_CODES.get(code, "") else said


ZIP_TYPE = "application/zip"
# What zipfile raises, besides BadZipFile, for a ZIP whose directory reads but whose content
# does not: a garbled deflate stream (zlib.error), a stream cut short (EOFError), an encrypted
# member (RuntimeError), a compression method it lacks (NotImplementedError), a broken LZMA or
# bzip2 stream (LZMAError, OSError), a malformed extra field (ValueError).
UNREADABLE_ZIP = (zlib.error, EOFError, RuntimeError, NotImplementedError, lzma.LZMAError, OSError, ValueError)
# edXML timestamps carry no zone; on this bus they are Vietnam time (UTC+7, no daylight saving).
VN_TZ = timezone(timedelta(hours=7), "ICT")


def q(name: str) -> str:
    """The qualified tag of an edXML element."""
    tag = _QUALIFIED.get(name)
    if tag is None:
        tag = _QUALIFIED[name] = f"{{{NS}}}{name}"
    return tag


_QUALIFIED: dict[str, str] = {}  # the reader looks up a few dozen names thousands of times a second


def fmt_date(value: date) -> str:
    return value.strftime(DATE_FORMAT)


def fmt_timestamp(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(VN_TZ)
    return value.strftime(TIMESTAMP_FORMAT)


def now_vn() -> datetime:
    return datetime.now(VN_TZ)


def vn_day_start(day: date) -> datetime:
    """Midnight starting ``day`` in Vietnam, as naive UTC (how the archive and the agencies'
    stores keep time).  Every day a person names (``--since``, ``--until``, ``--before``, a
    report's month) is a Vietnamese day: a document sent at 06:00 on the 28th is the 28th's,
    though the stores keep 23:00 on the 27th."""
    return datetime.combine(day, datetime.min.time(), tzinfo=VN_TZ).astimezone(UTC).replace(tzinfo=None)


def vn_clock(utc: datetime) -> datetime:
    """A stored time (naive UTC) on Vietnam's clock, naive: for the days and hours people count."""
    return utc.replace(tzinfo=UTC).astimezone(VN_TZ).replace(tzinfo=None)


def vn_text(utc: datetime | str | None) -> str:
    """A stored time (naive UTC, or its ``YYYY-MM-DD HH:MM:SS`` text) as Vietnam time, for people;
    anything else (``""``, "pending") as it is.  A text to the minute stays to the minute."""
    layout = "%Y-%m-%d %H:%M:%S"
    if isinstance(utc, str):
        if len(utc) == len("2026-11-27 09:00"):
            layout = "%Y-%m-%d %H:%M"
        try:
            utc = datetime.fromisoformat(utc)
        except ValueError:
            return str(utc)
    if utc is None:
        return ""
    return (vn_clock(utc) if utc.tzinfo is None else utc.astimezone(VN_TZ)).strftime(layout)


_TIMESTAMP = re.compile(r"(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})")


def parse_timestamp(text: str) -> datetime | None:
    """An edXML timestamp (``YYYY/MM/DD HH:MM:SS``) as an aware datetime (Vietnam time), or None."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        return None
    try:
        return datetime(*map(int, match.groups()), tzinfo=VN_TZ)  # type: ignore[misc,arg-type]
    except ValueError:
        return None


# --------------------------------------------------------------------------- model


@dataclass
class Organ:
    organ_id: str
    name: str = ""
    organization_in_charge: str = ""
    address: str = ""
    email: str = ""
    telephone: str = ""
    fax: str = ""
    website: str = ""


_ORGAN_FIELDS = (
    ("organ_id", "OrganId"),
    ("organization_in_charge", "OrganizationInCharge"),
    ("name", "OrganName"),
    ("address", "OrganAdd"),
    ("email", "Email"),
    ("telephone", "Telephone"),
    ("fax", "Fax"),
    ("website", "Website"),
)


@dataclass
class ResponseFor:
    organ_id: str
    document_id: str
    code: str = ""
    promulgation_date: str = ""


_RESPONSE_FIELDS = (
    ("organ_id", "OrganId"),
    ("code", "Code"),
    ("promulgation_date", "PromulgationDate"),
    ("document_id", "DocumentId"),
)


@dataclass
class StaffInfo:
    department: str = ""
    staff: str = ""
    email: str = ""
    mobile: str = ""


_STAFF_FIELDS = (("department", "Department"), ("staff", "Staff"), ("email", "Email"), ("mobile", "Mobile"))


@dataclass
class SignerInfo:
    competence: str = ""
    position: str = ""
    full_name: str = ""


_SIGNER_FIELDS = (("competence", "Competence"), ("position", "Position"), ("full_name", "FullName"))


@dataclass
class TraceHeader:
    organ_id: str
    timestamp: str


@dataclass
class ReplacementInfo:
    document_id: str
    organ_ids: list[str] = field(default_factory=list)


@dataclass
class Business:
    doc_type: int = 0
    reason: str = "Văn bản điện tử mới"
    paper: int = 0
    document_id: str = ""
    staff: StaffInfo | None = None
    replacements: list[ReplacementInfo] = field(default_factory=list)


@dataclass
class Attachment:
    """One attached file.  ``data`` is the decoded file; ``zipped`` says how it travels.

    Attachments are decoded lazily: a router that only needs the header never pays for
    base64 of a large scan.
    """

    content_id: str
    name: str
    content_type: str
    description: str = ""
    zipped: bool = False
    _data: bytes | None = None
    _encoded: str | None = None
    _max_bytes: int = Limits().max_attachment_bytes
    _checked: tuple[int, str] | None = None  # (size, sha256) of the decoded file, once checked
    # a large file travelling in chunks beside the envelope (bus.blobs); ``path``: where it
    # is on this machine, once it is here and its digest checked
    external: External | None = None
    path: Path | None = None

    @classmethod
    def from_file(cls, path: Path, content_type: str, *, content_id: str = "") -> Attachment:
        """A large file by reference: its digest is read now, its bytes travel in chunks."""
        return cls(
            content_id=content_id or f"cid:{path.name}",
            name=path.name,
            content_type=content_type,
            description=path.name,
            external=External.of_file(path),
            path=path,
        )

    @classmethod
    def from_bytes(
        cls, name: str, data: bytes, content_type: str, *, content_id: str = "", zipped: bool = False
    ) -> Attachment:
        return cls(
            content_id=content_id or f"cid:{name}",
            name=name,
            content_type=content_type,
            description=name,
            zipped=zipped,
            _data=data,
        )

    @property
    def data(self) -> bytes:
        """The file's bytes (for a large external file: read whole from ``path``; prefer the path)."""
        if self._data is None:
            if self.external is not None:
                if self.path is None:
                    raise SchemaViolation(f"the file of {self.name!r} is not on this machine", reason="not-found")
                return self.path.read_bytes()
            self._data = _decode(self._encoded or "", self.zipped, self.name, self._max_bytes)
        return self._data

    @property
    def size(self) -> int:
        if self.external is not None:
            return self.external.size
        return self._checked[0] if self._checked is not None else len(self.data)

    @property
    def sha256(self) -> str:
        if self.external is not None:
            return self.external.sha256
        return self._checked[1] if self._checked is not None else hashlib.sha256(self.data).hexdigest()

    def encoded(self) -> str:
        if self.external is not None:
            return ""
        if self._encoded is None:
            raw = self.data
            if self.zipped:
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr(self.name or "document", raw)
                raw = buf.getvalue()
            self._encoded = base64.b64encode(raw).decode("ascii")
        return self._encoded


KEEP_DECODED_BYTES = 256 * 1024  # decoded bytes kept per envelope once checked; the rest is decoded again when read


def check_attachments(msg: Message, max_total: int) -> None:
    """Decode every file carried inside the envelope now: one that is not base64, not the ZIP it
    claims to be, or too large unzipped is a refusal of the message with its reason, here, not
    a failure later in the archive or at hand-over.

    Security: ``max_total`` bounds the decoded (and unzipped) size of all the files of one
    envelope together, so a few kilobytes of zip bombs cannot make a router inflate gigabytes
    per message; each file's own bound is ``Limits.max_attachment_bytes``.  A checked file's
    size and digest are kept, and its bytes only within :data:`KEEP_DECODED_BYTES` per
    envelope, so a router's batch of a hundred envelopes never holds their decoded files.
    """
    left, keep = max_total, KEEP_DECODED_BYTES
    for a in getattr(msg, "attachments", ()):
        if a.external is not None or a._checked is not None:
            continue
        if a._data is not None:
            data = a._data
        else:
            try:
                data = _decode(a._encoded or "", a.zipped, a.name, min(a._max_bytes, left))
            except SchemaViolation as exc:
                if exc.reason == "attachment-too-large" and left < a._max_bytes:
                    raise SchemaViolation(
                        f"the files inside the envelope decode to more than {max_total} bytes in all",
                        reason="attachment-too-large",
                    ) from exc
                raise
        a._checked = (len(data), hashlib.sha256(data).hexdigest())
        left -= len(data)
        if a._encoded and len(data) > keep:
            a._data = None
        else:
            a._data, keep = data, keep - len(data)


def _decode(text: str, zipped: bool, name: str, max_bytes: int) -> bytes:
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SchemaViolation(
            f"attachment {name!r}: content is not valid base64 ({exc})", reason="bad-attachment"
        ) from exc
    if not zipped:
        if len(raw) > max_bytes:
            raise SchemaViolation(
                f"attachment {name!r} is {len(raw)} bytes, over {max_bytes}", reason="attachment-too-large"
            )
        return raw
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise SchemaViolation(
                    f"attachment {name!r}: a zipped attachment holds one file, found {len(members)}",
                    reason="bad-attachment",
                )
            member = members[0]
            if member.file_size > max_bytes:
                raise SchemaViolation(
                    f"attachment {name!r} unzips to {member.file_size} bytes, over {max_bytes}",
                    reason="attachment-too-large",
                )
            with zf.open(member) as fh:
                out = fh.read(max_bytes + 1)  # the header's size may lie: read no more than the limit
            if len(out) > max_bytes:
                raise SchemaViolation(
                    f"attachment {name!r} unzips to more than {max_bytes} bytes", reason="attachment-too-large"
                )
            return out
    except zipfile.BadZipFile as exc:
        raise SchemaViolation(
            f"attachment {name!r}: declared {ZIP_TYPE} but is not a ZIP ({exc})", reason="bad-attachment"
        ) from exc
    except UNREADABLE_ZIP as exc:
        raise SchemaViolation(
            f"attachment {name!r}: its ZIP cannot be read ({type(exc).__name__}: {exc})", reason="bad-attachment"
        ) from exc


@dataclass
class Edoc:
    """An edXML document message (văn bản)."""

    sender: Organ
    recipients: list[Organ]
    document_id: str
    code_number: str
    code_notation: str
    subject: str
    promulgation_place: str = ""
    promulgation_date: str = ""
    doc_type: str = "1"
    type_detail: str = "0"
    type_name: str = "Công văn"
    content: str = ""
    signer: SignerInfo = field(default_factory=SignerInfo)
    due_date: str = ""
    priority: int = 0
    sphere: str = ""
    typer_notation: str = ""
    promulgation_amount: str = ""
    page_amount: str = ""
    direction: str = ""
    appendixes: list[str] = field(default_factory=list)
    steering_type: str = ""
    to_places: list[str] = field(default_factory=list)
    response_for: list[ResponseFor] = field(default_factory=list)
    traces: list[TraceHeader] = field(default_factory=list)
    business: Business = field(default_factory=Business)
    attachments: list[Attachment] = field(default_factory=list)
    signature: str = "absent"  # "present" (an XMLDSig element), "placeholder" or "absent"
    extra: dict[str, str] = field(default_factory=dict)  # OtherInfo children we do not model

    kind = "edoc"

    @property
    def code(self) -> str:
        return f"{self.code_number}/{self.code_notation}" if self.code_notation else self.code_number

    @property
    def secrecy(self) -> str:
        """The secrecy marking, if any (``mật``, ``tối mật``, ``tuyệt mật``) from OtherInfo."""
        return self.extra.get("SecurityLevel", "") or self.extra.get("Secret", "")


@dataclass
class Status:
    """An edXML status message about one edoc, from one recipient (or the sender for 13)."""

    sender: Organ
    response_for: ResponseFor
    status_code: str
    description: str = ""
    timestamp: str = ""
    staff: StaffInfo = field(default_factory=StaffInfo)
    traces: list[TraceHeader] = field(default_factory=list)
    signature: str = "absent"

    kind = "status"

    @property
    def document_id(self) -> str:
        return self.response_for.document_id


Message = Edoc | Status


# --------------------------------------------------------------------------- parse


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return el.findall(q(name))  # direct children only (lxml, in C)


def _child(el: etree._Element | None, name: str) -> etree._Element | None:
    # iterchildren(tag) is a C loop; find() first compiles its argument as a path
    return next(el.iterchildren(q(name)), None) if el is not None else None


def _nested(el: etree._Element | None, container: str, name: str) -> list[etree._Element]:
    """Children ``name`` of the child ``container`` of ``el`` (empty when either is absent)."""
    c = _child(el, container)
    return _children(c, name) if c is not None else []


def _text(el: etree._Element | None, name: str) -> str:
    c = _child(el, name)
    return (c.text or "").strip() if c is not None else ""


def _first(el: etree._Element | None) -> dict[Any, etree._Element]:
    """The first child of each tag, in one pass over the children (cheaper than a lookup per name)."""
    return {} if el is None else {c.tag: c for c in reversed(el)}


def _texts(el: etree._Element | None) -> Callable[[str], str]:
    """``name -> stripped text of the first child name`` ('' when absent), over one pass."""
    first = _first(el)

    def text(name: str) -> str:
        c = first.get(q(name))
        return (c.text or "").strip() if c is not None else ""

    return text


def _read(cls: type, el: etree._Element | None, fields: tuple[tuple[str, str], ...]) -> Any:
    text = _texts(el)
    return cls(**{attr: text(tag) for attr, tag in fields})


def _int(value: str, what: str, default: int = 0) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise SchemaViolation(f"{what} must be a number, got {value!r}", reason="schema-invalid") from exc


def signature_element(root: etree._Element) -> etree._Element | None:
    """The envelope's Signature element, whatever namespace it is in (placeholders use edXML's)."""
    header = _child(_child(root, "edXMLEnvelope"), "edXMLHeader")
    if header is None:
        return None
    for c in header:
        if isinstance(c.tag, str) and etree.QName(c).localname == "Signature":
            return c
    return None


def parse_tree(root: etree._Element, limits: Limits | None = None) -> Message:
    """Read an edoc or status from a tree produced by :func:`bus.safexml.parse`.

    Raises :class:`MalformedEnvelope` when the root is not edXML.
    """
    limits = limits or Limits()
    if root.tag != q("edXML"):
        raise MalformedEnvelope(f"root element is {root.tag!r}, not edXML in namespace {NS}", reason="not-edxml")
    envelope = _child(root, "edXMLEnvelope")
    header = _child(envelope, "edXMLHeader")
    mh = _child(header, "MessageHeader")
    if mh is None:
        raise MalformedEnvelope("edXML has no edXMLEnvelope/edXMLHeader/MessageHeader", reason="not-edxml")
    sig = signature_element(root)
    signature = "absent" if sig is None else ("present" if sig.tag == f"{{{DSIG_NS}}}Signature" else "placeholder")
    sender = _read(Organ, _child(mh, "From"), _ORGAN_FIELDS)
    traces = [
        TraceHeader(_text(t, "OrganId"), _text(t, "Timestamp"))
        for t in _nested(header, "TraceHeaderList", "TraceHeader")
    ]
    if _child(mh, "StatusCode") is not None:
        return Status(
            sender=sender,
            response_for=_read(ResponseFor, _child(mh, "ResponseFor"), _RESPONSE_FIELDS),
            status_code=_text(mh, "StatusCode"),
            description=_text(mh, "Description"),
            timestamp=_text(mh, "Timestamp"),
            staff=_read(StaffInfo, _child(mh, "StaffInfo"), _STAFF_FIELDS),
            traces=traces,
            signature=signature,
        )
    kids = _first(mh)
    at = _texts(mh)
    code = _texts(kids.get(q("Code")))
    prom = _texts(kids.get(q("PromulgationInfo")))
    dtype = _texts(kids.get(q("DocumentType")))
    other = kids.get(q("OtherInfo"))
    other_text = _texts(other)
    modelled = {
        "Priority",
        "SphereOfPromulgation",
        "TyperNotation",
        "PromulgationAmount",
        "PageAmount",
        "Direction",
        "Appendixes",
    }
    extra = {}
    for c in other if other is not None else ():
        if isinstance(c.tag, str) and etree.QName(c).localname not in modelled:
            extra[etree.QName(c).localname] = (c.text or "").strip()
    bus_el = _child(_child(header, "TraceHeaderList"), "Bussiness")
    business = Business()
    if bus_el is not None:
        staff_el = _child(bus_el, "StaffInfo")
        business = Business(
            doc_type=_int(_text(bus_el, "BussinessDocType"), "BussinessDocType"),
            reason=_text(bus_el, "BussinessDocReason"),
            paper=_int(_text(bus_el, "Paper"), "Paper"),
            document_id=_text(bus_el, "DocumentId"),
            staff=_read(StaffInfo, staff_el, _STAFF_FIELDS) if staff_el is not None else None,
            replacements=[
                ReplacementInfo(
                    _text(r, "DocumentId"), [(o.text or "").strip() for o in _nested(r, "OrganIdList", "OrganId")]
                )
                for r in _nested(bus_el, "ReplacementInfoList", "ReplacementInfo")
            ],
        )
    return Edoc(
        sender=sender,
        recipients=[_read(Organ, t, _ORGAN_FIELDS) for t in _children(mh, "To")],
        document_id=at("DocumentId"),
        code_number=code("CodeNumber"),
        code_notation=code("CodeNotation"),
        subject=at("Subject"),
        promulgation_place=prom("Place"),
        promulgation_date=prom("PromulgationDate"),
        doc_type=dtype("Type"),
        type_detail=dtype("TypeDetail"),
        type_name=dtype("TypeName"),
        content=at("Content"),
        signer=_read(SignerInfo, kids.get(q("SignerInfo")), _SIGNER_FIELDS),
        due_date=at("DueDate"),
        priority=_int(other_text("Priority"), "OtherInfo/Priority"),
        sphere=other_text("SphereOfPromulgation"),
        typer_notation=other_text("TyperNotation"),
        promulgation_amount=other_text("PromulgationAmount"),
        page_amount=other_text("PageAmount"),
        direction=other_text("Direction"),
        appendixes=[(a.text or "").strip() for a in _nested(other, "Appendixes", "Appendix")],
        steering_type=at("SteeringType"),
        to_places=[(p.text or "").strip() for p in _nested(mh, "ToPlaces", "Place")],
        response_for=[_read(ResponseFor, r, _RESPONSE_FIELDS) for r in _children(mh, "ResponseFor")],
        traces=traces,
        business=business,
        attachments=_parse_attachments(root, envelope, limits),
        signature=signature,
        extra=extra,
    )


def _parse_attachments(root: etree._Element, envelope: etree._Element | None, limits: Limits) -> list[Attachment]:
    manifest = _child(_child(envelope, "edXMLBody"), "edXMLManifest")
    refs = {_text(r, "ContentId"): r for r in _children(manifest, "Reference")} if manifest is not None else {}
    encoded = _child(root, "AttachmentEncoded")
    out: list[Attachment] = []
    for a in _children(encoded, "Attachment") if encoded is not None else []:
        cid = _text(a, "ContentId")
        ref = refs.get(cid)
        transfer_type = _text(a, "ContentType")
        body = _child(a, "ContentTransferEncoded")
        ext = a.find(f"{{{EXT_NS}}}External")
        out.append(
            Attachment(
                content_id=cid,
                name=_text(a, "AttachmentName") or _text(ref, "AttachmentName"),
                content_type=_text(ref, "ContentType") or transfer_type,
                description=_text(a, "Description") or _text(ref, "Description"),
                zipped=transfer_type.lower() == ZIP_TYPE,
                _encoded=(body.text or "") if body is not None else "",
                _max_bytes=limits.max_attachment_bytes,
                external=External.from_attributes(ext.attrib) if ext is not None else None,
            )
        )
    return out


def check_manifest(root: etree._Element) -> None:
    """The manifest and the attachments must name the same files, once each."""
    manifest = _child(_child(_child(root, "edXMLEnvelope"), "edXMLBody"), "edXMLManifest")
    listed = [_text(r, "ContentId") for r in _children(manifest, "Reference")] if manifest is not None else []
    encoded = _child(root, "AttachmentEncoded")
    carried = [_text(a, "ContentId") for a in _children(encoded, "Attachment")] if encoded is not None else []
    for ids, what in ((listed, "manifest"), (carried, "AttachmentEncoded")):
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise SchemaViolation(f"{what} lists ContentId {sorted(dup)[0]!r} twice", reason="manifest-mismatch")
    if set(listed) != set(carried):
        missing = sorted(set(listed) - set(carried))
        unlisted = sorted(set(carried) - set(listed))
        detail = (
            f"manifest lists {missing} with no attachment"
            if missing
            else f"attachments {unlisted} are not in the manifest"
        )
        raise SchemaViolation(f"manifest and attachments differ: {detail}", reason="manifest-mismatch")


# --------------------------------------------------------------------------- build


def _sub(parent: etree._Element, name: str, text: str | None = None, **kw: Any) -> etree._Element:
    try:
        el = etree.SubElement(parent, q(name), **kw)
        if text is not None:
            el.text = text
    except ValueError as exc:  # lxml refuses what XML 1.0 cannot hold: say which field and character
        bad = next((v for v in (text, *kw.values()) if isinstance(v, str) and _unwritable(v)), "")
        char = _unwritable(bad)
        where = f"{name} {bad[:80]!r}" if bad else name
        raise SchemaViolation(
            f"{where} holds {char or 'a character'} that XML cannot carry", reason="not-xml-text"
        ) from exc
    return el


def _unwritable(text: str) -> str:
    """The first character of ``text`` XML 1.0 has no place for, as U+XXXX ('' if none)."""
    for c in text:
        o = ord(c)
        if (o < 0x20 and c not in "\t\n\r") or 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF):
            return f"U+{o:04X}"
    return ""


def _write(
    parent: etree._Element, obj: Any, fields: tuple[tuple[str, str], ...], *, keep: tuple[str, ...] = ()
) -> None:
    for attr, tag in fields:
        value = getattr(obj, attr)
        if value or tag in keep:
            _sub(parent, tag, value)


def build_tree(msg: Message, *, signature_placeholder: bool = True) -> etree._Element:
    """Lay ``msg`` out as the official samples do; optionally with a slot for the signature."""
    root = etree.Element(q("edXML"), nsmap={None: NS})
    envelope = _sub(root, "edXMLEnvelope", nsmap={"edXML": NS})
    header = _sub(envelope, "edXMLHeader")
    mh = _sub(header, "MessageHeader")
    _write(_sub(mh, "From"), msg.sender, _ORGAN_FIELDS, keep=("OrganId",))
    if isinstance(msg, Status):
        _write(_sub(mh, "ResponseFor"), msg.response_for, _RESPONSE_FIELDS, keep=("OrganId", "DocumentId"))
        _write(_sub(mh, "StaffInfo"), msg.staff, _STAFF_FIELDS)
        _sub(mh, "StatusCode", msg.status_code)
        _sub(mh, "Description", msg.description)
        _sub(mh, "Timestamp", msg.timestamp)
        if msg.traces:
            _build_traces(_sub(header, "TraceHeaderList"), msg.traces)
    else:
        _build_edoc_header(mh, msg)
        thl = _sub(header, "TraceHeaderList")
        _build_traces(thl, msg.traces)
        _build_business(thl, msg.business)
    if signature_placeholder:
        etree.SubElement(header, f"{{{DSIG_NS}}}Signature", Id="placeholder", nsmap={"ds": DSIG_NS})
    if isinstance(msg, Edoc):
        body = _sub(envelope, "edXMLBody")
        manifest = _sub(body, "edXMLManifest", version="1.0")
        for a in msg.attachments:
            ref = _sub(manifest, "Reference")
            _sub(ref, "ContentId", a.content_id)
            _sub(ref, "ContentType", a.content_type)
            _sub(ref, "Description", a.description or a.name)
            _sub(ref, "AttachmentName", a.name)
        if msg.attachments:
            enc = _sub(root, "AttachmentEncoded")
            for a in msg.attachments:
                att = _sub(enc, "Attachment")
                _sub(att, "ContentId", a.content_id)
                _sub(att, "AttachmentName", a.name)
                _sub(att, "Description", a.description or a.name)
                _sub(att, "ContentType", ZIP_TYPE if a.zipped else a.content_type)
                _sub(att, "ContentTransferEncoded", a.encoded(), nsmap={"edXML": NS})
                if a.external is not None:
                    etree.SubElement(att, f"{{{EXT_NS}}}External", a.external.attributes(), nsmap={"dbx": EXT_NS})
    return root


def _build_edoc_header(mh: etree._Element, msg: Edoc) -> None:
    for organ in msg.recipients:
        _write(_sub(mh, "To"), organ, _ORGAN_FIELDS, keep=("OrganId",))
    _sub(mh, "DocumentId", msg.document_id)
    code = _sub(mh, "Code")
    _sub(code, "CodeNumber", msg.code_number)
    _sub(code, "CodeNotation", msg.code_notation)
    prom = _sub(mh, "PromulgationInfo")
    _sub(prom, "Place", msg.promulgation_place)
    _sub(prom, "PromulgationDate", msg.promulgation_date)
    dtype = _sub(mh, "DocumentType")
    _sub(dtype, "Type", msg.doc_type)
    _sub(dtype, "TypeDetail", msg.type_detail)
    _sub(dtype, "TypeName", msg.type_name)
    _sub(mh, "Subject", msg.subject)
    _sub(mh, "Content", msg.content)
    _write(_sub(mh, "SignerInfo"), msg.signer, _SIGNER_FIELDS)
    if msg.due_date:
        _sub(mh, "DueDate", msg.due_date)
    other = _sub(mh, "OtherInfo")
    _sub(other, "Priority", str(msg.priority))
    for attr, tag in (
        ("sphere", "SphereOfPromulgation"),
        ("typer_notation", "TyperNotation"),
        ("promulgation_amount", "PromulgationAmount"),
        ("page_amount", "PageAmount"),
        ("direction", "Direction"),
    ):
        if getattr(msg, attr):
            _sub(other, tag, getattr(msg, attr))
    if msg.appendixes:
        apps = _sub(other, "Appendixes")
        for a in msg.appendixes:
            _sub(apps, "Appendix", a)
    for tag, value in msg.extra.items():
        _sub(other, tag, value)
    for r in msg.response_for:
        _write(_sub(mh, "ResponseFor"), r, _RESPONSE_FIELDS, keep=("OrganId", "DocumentId"))
    if msg.steering_type:
        _sub(mh, "SteeringType", msg.steering_type)
    if msg.to_places:
        places = _sub(mh, "ToPlaces")
        for p in msg.to_places:
            _sub(places, "Place", p)


def _build_traces(parent: etree._Element, traces: list[TraceHeader]) -> None:
    for t in traces:
        th = _sub(parent, "TraceHeader")
        _sub(th, "OrganId", t.organ_id)
        _sub(th, "Timestamp", t.timestamp)


def _build_business(parent: etree._Element, b: Business) -> None:
    el = _sub(parent, "Bussiness")
    if b.document_id:
        _sub(el, "DocumentId", b.document_id)
    _sub(el, "BussinessDocType", str(b.doc_type))
    _sub(el, "BussinessDocReason", b.reason)
    _sub(el, "Paper", str(b.paper))
    if b.replacements:
        lst = _sub(el, "ReplacementInfoList")
        for r in b.replacements:
            ri = _sub(lst, "ReplacementInfo")
            _sub(ri, "DocumentId", r.document_id)
            ids = _sub(ri, "OrganIdList")
            for o in r.organ_ids:
                _sub(ids, "OrganId", o)
    if b.staff is not None:
        _write(_sub(el, "StaffInfo"), b.staff, _STAFF_FIELDS)


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def serialize(root: etree._Element) -> bytes:
    """Bytes of ``root`` as-is (no re-indenting: that would break a signature)."""
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def to_bytes(root: etree._Element) -> bytes:
    etree.indent(root, space="  ")
    return serialize(root)


def build(msg: Message) -> bytes:
    """Unsigned bytes of ``msg`` (for tests and for tools; the bus sends only signed ones)."""
    return to_bytes(build_tree(msg, signature_placeholder=False))


# --------------------------------------------------------------------------- summaries


def summary(msg: Message) -> dict[str, Any]:
    """The header as plain data: what ``docbus inspect --json`` prints."""
    out: dict[str, Any] = {
        "kind": msg.kind,
        "document_id": msg.document_id,
        "from": {"organ_id": msg.sender.organ_id, "name": msg.sender.name},
        "signature": "present"
        if msg.signature == "present"
        else ("placeholder" if msg.signature == "placeholder" else "absent"),
        "traces": [{"organ_id": t.organ_id, "timestamp": t.timestamp} for t in msg.traces],
    }
    if isinstance(msg, Status):
        out.update(
            status_code=msg.status_code,
            status_name=STATUS_CODES.get(msg.status_code, ""),
            description=msg.description,
            timestamp=msg.timestamp,
            response_for={
                "organ_id": msg.response_for.organ_id,
                "document_id": msg.response_for.document_id,
                "code": msg.response_for.code,
            },
            to=[{"organ_id": msg.response_for.organ_id, "name": ""}],
            code=None,
            subject=None,
            priority=None,
            attachments=[],
        )
        return out
    out.update(
        to=[{"organ_id": o.organ_id, "name": o.name} for o in msg.recipients],
        code={"number": msg.code_number, "notation": msg.code_notation},
        subject=msg.subject,
        content=msg.content,
        priority=msg.priority,
        priority_name=PRIORITIES.get(msg.priority, ""),
        status_code=None,
        document_type={"type": msg.doc_type, "detail": msg.type_detail, "name": msg.type_name},
        promulgation={"place": msg.promulgation_place, "date": msg.promulgation_date},
        business={
            "doc_type": msg.business.doc_type,
            "name": BUSINESS_DOC_TYPES.get(msg.business.doc_type, ""),
            "reason": msg.business.reason,
        },
        response_for=[{"organ_id": r.organ_id, "document_id": r.document_id} for r in msg.response_for],
        attachments=[
            {
                "content_id": a.content_id,
                "name": a.name,
                "content_type": a.content_type,
                "zipped": a.zipped,
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in msg.attachments
        ],
    )
    return out
