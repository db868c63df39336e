"""The hostile-input corpus: every case the router must refuse, with the reason it must give.

Shared by the unit tests (router on the in-memory transport, and ``docbus verify``) and the
integration test that sends the whole corpus through RabbitMQ.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from bus import compose, edxml, safexml
from bus.config import Settings
from bus.edxml import Attachment, Organ
from signing.ca import CertificateAuthority, cert_pem, key_pem, new_key
from signing.identity import Identity
from tests.helpers import PDF, edoc, identity, signed_edoc

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"
DS = "{http://www.w3.org/2000/09/xmldsig#}"


@dataclass
class Case:
    name: str
    data: bytes
    reason: str
    sender: str = PC  # the OrganId in the routing key
    verify_reason: str | None = None  # what `docbus verify` says, when a file alone cannot show more

    @property
    def expected_by_verify(self) -> str:
        return self.verify_reason or self.reason


def _with_cert(settings: Settings, sender: str, **issue_kw: object) -> bytes:
    ca = CertificateAuthority.load(settings.home)
    key = new_key()
    cert = ca.issue(sender, "Sở", key.public_key(), **issue_kw)  # type: ignore[arg-type]
    return compose.sign(edoc(sender, [DEPT]), Identity(sender, "Sở", key_pem(key), cert_pem(cert)))


def _edit(data: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = safexml.parse(data)
    change(root)
    return edxml.serialize(root)


def _transplant(settings: Settings) -> bytes:
    genuine = safexml.parse(signed_edoc(settings, PC, [DEPT]))
    forged = safexml.parse(signed_edoc(settings, PC, [DEPT], subject="Quyết định giả mạo"))
    fsig = forged.find(f".//{DS}Signature")
    fsig.getparent().replace(fsig, genuine.find(f".//{DS}Signature"))
    return edxml.serialize(forged)


def _nested_original(settings: Settings) -> bytes:
    """The genuine signed document hidden inside a forged one whose signature is the genuine one."""
    genuine = safexml.parse(signed_edoc(settings, PC, [DEPT]))
    forged = safexml.parse(edxml.build(edoc(PC, [DEPT], subject="Lệnh chi tiền giả")))
    header = forged.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader")
    header.append(genuine.find(f".//{DS}Signature"))
    other = forged.find(f".//{{{edxml.NS}}}OtherInfo")
    holder = etree.SubElement(other, edxml.q("Wrapped"))
    holder.append(genuine)
    return edxml.serialize(forged)


def _signature_in_attachments(settings: Settings) -> bytes:
    def move(root: etree._Element) -> None:
        sig = root.find(f".//{DS}Signature")
        root.find(f"{{{edxml.NS}}}AttachmentEncoded").append(sig)

    return _edit(signed_edoc(settings, PC, [DEPT]), move)


def _second_signature(settings: Settings) -> bytes:
    other = safexml.parse(signed_edoc(settings, PC, [DEPT], number="99"))

    def add(root: etree._Element) -> None:
        header = root.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader")
        header.append(other.find(f".//{DS}Signature"))

    return _edit(signed_edoc(settings, PC, [DEPT]), add)


def _partial_reference(settings: Settings) -> bytes:
    return _edit(signed_edoc(settings, PC, [DEPT]), lambda r: r.find(f".//{DS}Reference").set("URI", "#MessageHeader"))


def _tampered_attachment(settings: Settings) -> bytes:
    def change(root: etree._Element) -> None:
        root.find(f".//{{{edxml.NS}}}ContentTransferEncoded").text = "JVBERi0xLjQKJSBldmlsCg=="

    return _edit(signed_edoc(settings, PC, [DEPT]), change)


def _from_other_agency(settings: Settings) -> bytes:
    """From names FIN; signed with PC's key and certificate."""
    msg = edoc(FIN, [DEPT])
    return compose.sign(msg, identity(settings, PC))


def _trace_in_the_hubs_name(settings: Settings, kind: str) -> bytes:
    """A sender's own signed TraceHeader in the data centre's name: a relay that never happened."""
    if kind == "edoc":
        msg: edxml.Message = edoc(PC, [DEPT])
    else:
        msg = compose.new_status(Organ(PC), edoc_sender=DEPT, document_id=f"{DEPT},2026/11/28,1/SNV-VP", code="03")
    msg.traces.append(edxml.TraceHeader(settings.hub_organ_id, msg.traces[0].timestamp))
    return compose.sign(msg, identity(settings, PC))


def _carrying(settings: Settings, attachment: Attachment) -> bytes:
    """A document of PC, properly signed, whose one file is ``attachment`` exactly as given."""
    msg = edoc(PC, [DEPT])
    msg.attachments = [attachment]
    return compose.sign(msg, identity(settings, PC))


def _zip_bomb(settings: Settings) -> bytes:
    """About 70 KB of ZIP that unzips to more than a file may be."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cong-van.pdf", b"\0" * (settings.limits.max_attachment_bytes + 1))
    return _carrying(
        settings,
        Attachment("cid:bom", "cong-van.pdf", "application/pdf", zipped=True, _encoded=_b64(buf.getvalue())),
    )


def _broken_zip(settings: Settings, how: str) -> bytes:
    """A well-formed ZIP of one file whose content cannot be read: its deflate stream garbled
    (``stream``), flagged as encrypted (``encrypted``) or in a compression method nobody has
    (``method``). Each makes Python's zipfile raise something other than BadZipFile."""
    content = "Công văn V/v kết nối ".encode() * 200
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cong-van.pdf", content)
    data = bytearray(buf.getvalue())
    local, central = 0, data.index(b"PK\x01\x02")
    if how == "stream":
        start = 30 + len("cong-van.pdf")
        data[start:central] = b"\xff" * (central - start)  # a deflate block type that does not exist
    elif how == "encrypted":
        data[local + 6] |= 1
        data[central + 8] |= 1
    else:
        data[local + 8 : local + 10] = data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return _carrying(
        settings,
        Attachment("cid:z", "cong-van.pdf", "application/pdf", zipped=True, _encoded=_b64(bytes(data))),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hostile_corpus(settings: Settings, *, revoked_cert: bytes, big: int = 100 * 1024 * 1024) -> list[Case]:
    """Every case of the issue's list. ``revoked_cert``: an edoc signed by a certificate the caller revoked."""
    good = signed_edoc(settings, PC, [DEPT])
    now = dt.datetime.now(dt.UTC)
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    return [
        Case(
            "xxe",
            b'<?xml version="1.0"?><!DOCTYPE edXML [<!ENTITY x SYSTEM "file:///etc/passwd">]><edXML>&x;</edXML>',
            "dtd-forbidden",
        ),
        Case(
            "billion-laughs",
            f'<?xml version="1.0"?><!DOCTYPE edXML [{lol}]><edXML>&l9;</edXML>'.encode(),
            "dtd-forbidden",
        ),
        Case(
            "quadratic-blowup",
            b'<!DOCTYPE edXML [<!ENTITY a "' + b"x" * 50_000 + b'">]><edXML>' + b"&a;" * 50_000 + b"</edXML>",
            "dtd-forbidden",
        ),
        Case(
            "external-dtd",
            b'<?xml version="1.0"?><!DOCTYPE edXML SYSTEM "http://attacker.invalid/edxml.dtd"><edXML/>',
            "dtd-forbidden",
        ),
        Case("nesting-10000", b"<a>" * 10_000 + b"</a>" * 10_000, "too-deep"),
        Case("text-node-100MB", b"<edXML>" + b"A" * big + b"</edXML>", "too-large"),
        Case(
            "over-size-limit",
            good.replace(b"</edXML>", b"<!--" + b"p" * (settings.limits.max_envelope_bytes) + b"--></edXML>"),
            "too-large",
        ),
        Case("invalid-utf8", good.replace("kết nối".encode(), b"k\xe1\xba t n\xff i"), "bad-encoding"),
        Case("non-edxml-root", '<?xml version="1.0"?><html><body>Công văn</body></html>'.encode(), "not-edxml"),
        Case("wrap-transplanted-signature", _transplant(settings), "signature-invalid"),
        Case("wrap-nested-original", _nested_original(settings), "signature-invalid"),
        Case("wrap-partial-reference", _partial_reference(settings), "signature-scope"),
        Case("wrap-second-signature", _second_signature(settings), "schema-invalid"),
        Case("wrap-signature-in-attachments", _signature_in_attachments(settings), "signature-absent"),
        Case("tampered-attachment", _tampered_attachment(settings), "signature-invalid"),
        Case("tampered-header", good.replace("kết nối".encode(), "kết lối".encode()), "signature-invalid"),
        Case(
            "cert-expired", _with_cert(settings, PC, days=30, not_before=now - dt.timedelta(days=400)), "cert-expired"
        ),
        Case(
            "cert-not-yet-valid", _with_cert(settings, PC, not_before=now + dt.timedelta(days=30)), "cert-not-yet-valid"
        ),
        Case("cert-revoked", revoked_cert, "cert-revoked"),
        Case("cert-other-ca", _rogue(settings), "cert-untrusted"),
        Case("cert-of-another-agency", signed_edoc(settings, PC, [DEPT], signer=FIN), "sender-mismatch"),
        Case("from-another-agency", _from_other_agency(settings), "sender-mismatch"),
        Case("trace-in-the-hubs-name", _trace_in_the_hubs_name(settings, "edoc"), "trace-forged"),
        # a status's TraceHeaders end its list: read as a delivery (`docbus verify`), it is taken
        # for the data centre's own trailing one, which carries no seal
        Case(
            "status-trace-in-the-hubs-name",
            _trace_in_the_hubs_name(settings, "status"),
            "trace-forged",
            verify_reason="trace-seal",
        ),
        Case(
            "attachment-declared-zip-is-not",
            _carrying(
                settings, Attachment("cid:z", "cong-van.pdf", "application/pdf", zipped=True, _encoded=_b64(PDF))
            ),
            "bad-attachment",
        ),
        Case("attachment-zip-bomb", _zip_bomb(settings), "attachment-too-large"),
        Case("attachment-zip-garbled-stream", _broken_zip(settings, "stream"), "bad-attachment"),
        Case("attachment-zip-encrypted", _broken_zip(settings, "encrypted"), "bad-attachment"),
        Case("attachment-zip-unknown-method", _broken_zip(settings, "method"), "bad-attachment"),
        Case("secret", signed_edoc(settings, PC, [DEPT], security_level="Tuyệt mật"), "secret-document"),
        Case("no-electronic-file", signed_edoc(settings, PC, [DEPT], files=False), "no-electronic-file"),
        Case("unknown-recipient", signed_edoc(settings, PC, [DEPT, "000.00.88.H61"]), "unknown-recipient"),
        Case("duplicate-recipient", signed_edoc(settings, PC, [DEPT, FIN, DEPT]), "duplicate-recipient"),
    ]


def _rogue(settings: Settings) -> bytes:
    import tempfile
    from pathlib import Path

    home = Path(tempfile.mkdtemp())
    rogue = CertificateAuthority.create(home)
    ident = Identity.issue(rogue, PC, "Giả mạo", home / "id")
    return compose.sign(edoc(PC, [DEPT]), ident)


def replay_variant(data: bytes) -> bytes:
    """The same signed content in other bytes (quote style of the XML declaration): a replay."""
    return data.replace(b'<?xml version="1.0" encoding="UTF-8"?>', b"<?xml version='1.0' encoding='UTF-8'?>", 1)


__all__ = ["PDF", "Case", "hostile_corpus", "replay_variant"]
