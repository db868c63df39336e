"""From untrusted bytes to a verified message: the only door into business logic.

``open_envelope`` runs, in order: safe parse (size, depth, no DTD) -> XSD profile ->
manifest/attachment match -> XMLDSig signature over the whole envelope -> certificate
issued by the provincial CA, valid now, not revoked -> OrganId in the certificate equals
``From/OrganId``.  What it returns was read from the signed tree only.

Security: the router appends its own TraceHeader after the sender signed; a recipient
removes trailing TraceHeaders of the hub (``Trust.hub_organ_id``) before verifying, so
the sender's signature still covers every byte the sender wrote.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from cryptography import x509
from lxml import etree

from bus import edxml, safexml, schema
from bus.archive import sha256
from bus.config import Limits
from bus.errors import SignatureRejected
from signing import xmldsig
from signing.ca import CertificateAuthority


@dataclass(frozen=True)
class Trust:
    """What a verifier trusts: the provincial CA, its revocations, and the hub's OrganId."""

    ca: CertificateAuthority
    hub_organ_id: str
    revoked_serials: frozenset[int] = field(default_factory=frozenset)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Opened:
    """A verified message: its signed tree, the model read from it, and who signed it."""

    root: etree._Element
    message: edxml.Message
    signer: str  # OrganId from the certificate
    certificate: x509.Certificate
    digest: str  # sha256 of the bytes as received
    signature_digest: str = ""  # the signed DigestValue (identifies the signed content)


def strip_hub_traces(root: etree._Element, hub_organ_id: str) -> list[edxml.TraceHeader]:
    """Remove the hub's trailing TraceHeaders (appended after signing); return them."""
    header = root.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader")
    thl = header.find(f"{{{edxml.NS}}}TraceHeaderList") if header is not None else None
    removed: list[edxml.TraceHeader] = []
    # index 0 is always the sender's own TraceHeader, even when the sender is the hub
    while thl is not None and len(thl) > 1 and thl[-1].tag == edxml.q("TraceHeader"):
        last = thl[-1]
        organ = (last.findtext(edxml.q("OrganId")) or "").strip()
        if organ != hub_organ_id:
            break
        removed.insert(0, edxml.TraceHeader(organ, (last.findtext(edxml.q("Timestamp")) or "").strip()))
        thl.remove(last)
    return removed


_THL_END = re.compile(rb"</([A-Za-z_][\w.-]*:)?TraceHeaderList\s*>")


def append_hub_trace(raw: bytes, hub_organ_id: str, at: dt.datetime | None = None) -> bytes:
    """``raw`` with the hub's TraceHeader appended, leaving every signed byte's meaning intact.

    The router calls this on envelopes it has verified.  When the TraceHeaderList's end tag
    occurs exactly once in the bytes it can only be the real one (a look-alike in a comment
    or CDATA would make two), so the TraceHeader is spliced in before it, with the same
    prefix, and every other byte stays as the sender wrote it.  Otherwise the tree is
    parsed and re-serialized.
    """
    ends = list(_THL_END.finditer(raw))
    if len(ends) == 1 and hub_organ_id.replace(".", "").isalnum():
        prefix = (ends[0].group(1) or b"").decode("ascii")
        at_text = edxml.fmt_timestamp(at or edxml.now_vn())
        trace = (
            f"<{prefix}TraceHeader><{prefix}OrganId>{hub_organ_id}</{prefix}OrganId>"
            f"<{prefix}Timestamp>{at_text}</{prefix}Timestamp></{prefix}TraceHeader>"
        ).encode("ascii")
        cut = ends[0].start()
        return raw[:cut] + trace + raw[cut:]
    root = safexml.parse(raw, Limits(max_envelope_bytes=len(raw) + 1))
    thl = root.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader/{{{edxml.NS}}}TraceHeaderList")
    if thl is None:
        return raw
    th = etree.SubElement(thl, edxml.q("TraceHeader"))
    etree.SubElement(th, edxml.q("OrganId")).text = hub_organ_id
    etree.SubElement(th, edxml.q("Timestamp")).text = edxml.fmt_timestamp(at or edxml.now_vn())
    return edxml.serialize(root)


def open_envelope(data: bytes, trust: Trust, *, at: dt.datetime | None = None, from_hub: bool = False) -> Opened:
    """Verify ``data`` completely or raise a :class:`bus.errors.Refused` with a specific reason.

    ``from_hub``: the bytes came from the router's delivery exchange and may carry the hub's
    trailing TraceHeaders.
    """
    digest = sha256(data)
    root = safexml.parse(data, trust.limits)
    if root.tag != edxml.q("edXML"):
        edxml.parse_tree(root)  # raises not-edxml with a clear message
    hub_traces = strip_hub_traces(root, trust.hub_organ_id) if from_hub else []
    sig = edxml.signature_element(root)
    if sig is None:
        raise SignatureRejected("the envelope is not signed", reason="signature-absent")
    if sig.tag != f"{{{edxml.DSIG_NS}}}Signature":
        raise SignatureRejected(
            "the Signature is a placeholder outside the XMLDSig namespace: not verifiable",
            reason="signature-unverifiable",
        )
    schema.validate(root, "strict")
    edxml.check_manifest(root)
    digest_value = (
        sig.findtext(f"{{{edxml.DSIG_NS}}}SignedInfo/{{{edxml.DSIG_NS}}}Reference/{{{edxml.DSIG_NS}}}DigestValue") or ""
    ).strip()
    cert = xmldsig.embedded_certificate(root)
    signer = trust.ca.check(cert, at=at, revoked_serials=trust.revoked_serials)
    signed = xmldsig.verify(root, cert)
    message = edxml.parse_tree(signed, trust.limits)
    if message.sender.organ_id != signer:
        raise SignatureRejected(
            f"From/OrganId {message.sender.organ_id} is not the signer's OrganId {signer}", reason="sender-mismatch"
        )
    message.traces.extend(hub_traces)
    return Opened(
        root=signed, message=message, signer=signer, certificate=cert, digest=digest, signature_digest=digest_value
    )


def peek_document_id(body: bytes) -> str:
    """Best-effort DocumentId of a refused message, to address the answer only (never trusted:
    the router checks that whoever answers is a recipient of that document)."""
    return _peek_text(body, b"DocumentId>")[:300]


def peek_status_code(body: bytes) -> str:
    """Best-effort StatusCode of a status, for showing one of the agency's own (never trusted)."""
    return _peek_text(body, b"StatusCode>")[:4]


def _peek_text(body: bytes, tag: bytes) -> str:
    """The text after the first ``tag`` (an element's opening tag's end) in the first MB, or ''."""
    start = body.find(tag, 0, 1_000_000)
    end = body.find(b"<", start + len(tag)) if start >= 0 else -1
    if end < 0:
        return ""
    try:
        return body[start + len(tag) : end].decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def peek_kind(body: bytes) -> str:
    """Best-effort kind of a refused message ('edoc', 'status' or 'unknown'), never trusted."""
    return "status" if b"StatusCode>" in body[:1_000_000] else ("edoc" if b"edXML" in body[:4096] else "unknown")
