"""From untrusted bytes to a verified message: the only door into business logic.

``open_envelope`` runs, in order: safe parse (size, depth, no DTD) -> XSD profile ->
manifest/attachment match -> XMLDSig signature over the whole envelope -> certificate
issued by the provincial CA, valid now, not revoked -> OrganId in the certificate equals
``From/OrganId`` -> every file inside decodes (base64, the ZIP it claims, within the size
bounds).  What it returns was read from the signed tree only.

Security: the router appends its own TraceHeader after the sender signed, sealed with the
hub's seal key (:mod:`signing.seal`); a recipient removes trailing TraceHeaders of the hub
(``Trust.hub_organ_id``) before verifying, so the sender's signature still covers every
byte the sender wrote, then checks each removed TraceHeader's seal against the sender's
SignatureValue.  A TraceHeader in the hub's name inside the signed content is refused:
only the data centre writes one, after the signature.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography import x509
from lxml import etree

from bus import edxml, safexml, schema
from bus.archive import sha256
from bus.config import Limits
from bus.errors import Refused, SignatureRejected
from signing import seal, xmldsig
from signing.ca import CertificateAuthority
from signing.identity import Identity


@dataclass(frozen=True)
class Trust:
    """What a verifier trusts: the provincial CA, its revocations, and the hub's OrganId."""

    ca: CertificateAuthority
    hub_organ_id: str
    revoked_serials: frozenset[int] = field(default_factory=frozenset)
    limits: Limits = field(default_factory=Limits)
    # when each revocation happened (the CRL's dates), where known: a delivery's signer is then
    # judged as of the data centre's sealed relay time (see open_envelope)
    revocations: Mapping[int, dt.datetime] | None = None

    def revoked_as_of(self, when: dt.datetime) -> frozenset[int]:
        """The serials revoked at ``when``: dated ones revoked by then, undated ones always."""
        dated = self.revocations or {}
        return frozenset(s for s in self.revoked_serials if s not in dated) | frozenset(
            s for s, revoked in dated.items() if revoked <= when
        )


@dataclass
class Opened:
    """A verified message: its signed tree, the model read from it, and who signed it."""

    root: etree._Element
    message: edxml.Message
    signer: str  # OrganId from the certificate
    certificate: x509.Certificate
    digest: str  # sha256 of the bytes as received
    signature_digest: str = ""  # the signed DigestValue (identifies the signed content)
    relayed: list[edxml.TraceHeader] = field(default_factory=list)  # the hub's, each seal checked


@dataclass(frozen=True)
class HubTrace:
    """A TraceHeader the hub appended, as removed from the envelope, with its seal (signing.seal)."""

    trace: edxml.TraceHeader
    certificate: str | None  # the Seal's Certificate attribute (base64 DER), None when unsealed
    value: str | None


def strip_hub_traces(root: etree._Element, hub_organ_id: str) -> list[HubTrace]:
    """Remove the hub's trailing TraceHeaders (appended after signing); return them, unchecked."""
    header = root.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader")
    thl = header.find(f"{{{edxml.NS}}}TraceHeaderList") if header is not None else None
    removed: list[HubTrace] = []
    # index 0 is always the sender's own TraceHeader, even when the sender is the hub
    while thl is not None and len(thl) > 1 and thl[-1].tag == edxml.q("TraceHeader"):
        last = thl[-1]
        organ = (last.findtext(edxml.q("OrganId")) or "").strip()
        if organ != hub_organ_id:
            break
        trace = edxml.TraceHeader(organ, (last.findtext(edxml.q("Timestamp")) or "").strip())
        found = last.find(seal.TAG)
        shape = [child.tag for child in last]
        if found is None or shape != [edxml.q("OrganId"), edxml.q("Timestamp"), seal.TAG]:
            removed.insert(0, HubTrace(trace, None, None))
        else:
            removed.insert(0, HubTrace(trace, found.get("Certificate") or "", found.text or ""))
        thl.remove(last)
    return removed


def check_hub_traces(
    traces: list[HubTrace], sender_signature: str, trust: Trust, at: dt.datetime | None = None
) -> list[edxml.TraceHeader]:
    """Each hub TraceHeader's seal, or :class:`SignatureRejected` (``trace-seal``).

    Only the data centre holds the seal key, so a TraceHeader in its name without a valid
    seal was written by someone else (or altered since): the envelope is refused.
    """
    for t in traces:
        if t.certificate is None or t.value is None:
            raise SignatureRejected(
                f"a TraceHeader in the data centre's name ({t.trace.timestamp}) carries no seal", reason="trace-seal"
            )
        seal.verify(
            trust.ca,
            trust.hub_organ_id,
            t.certificate,
            t.value,
            seal.statement(t.trace.organ_id, t.trace.timestamp, sender_signature),
            at=at,
            revoked_serials=trust.revoked_serials,
        )
    return [t.trace for t in traces]


_THL_END = re.compile(rb"</([A-Za-z_][\w.-]*:)?TraceHeaderList\s*>")


_SIGNATURE_VALUE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?SignatureValue(?:\s[^>]*)?>([^<&]*)</")


def sender_signature(raw: bytes) -> str:
    """The SignatureValue of a verified envelope, read from its bytes.

    Found by pattern when it occurs exactly once (a look-alike in a comment, CDATA or an
    extension element would make two) and holds no character reference; otherwise read
    from the parsed tree."""
    found = _SIGNATURE_VALUE.findall(raw)
    if len(found) == 1 and raw.count(b"SignatureValue") == 2:
        return "".join(found[0].decode("ascii").split())
    root = safexml.parse(raw, Limits(max_envelope_bytes=len(raw) + 1))
    sig = edxml.signature_element(root)  # the one the envelope was verified with, as a recipient reads it
    value = sig.findtext(f"{{{edxml.DSIG_NS}}}SignatureValue") if sig is not None else None
    if value is None:
        raise SignatureRejected("the envelope has no SignatureValue", reason="signature-absent")
    return "".join(value.split())


@dataclass(frozen=True)
class Relay:
    """An envelope as the router delivers it, with the seal it appended (also the sender's receipt)."""

    data: bytes
    at: str  # the appended TraceHeader's Timestamp
    certificate: str  # the seal's certificate, base64 DER
    seal: str


def append_hub_trace(raw: bytes, hub: Identity, at: dt.datetime | None = None) -> bytes:
    """``raw`` with the hub's sealed TraceHeader appended (see :func:`relay`)."""
    return relay(raw, hub, at).data


def relay(raw: bytes, hub: Identity, at: dt.datetime | None = None) -> Relay:
    """``raw`` with the hub's sealed TraceHeader appended, leaving every signed byte's meaning intact.

    The router calls this on envelopes it has verified, with its seal identity
    (:mod:`signing.seal`).  When the TraceHeaderList's end tag occurs exactly once in the
    bytes it can only be the real one (a look-alike in a comment or CDATA would make two),
    so the TraceHeader is spliced in before it, with the same prefix, and every other byte
    stays as the sender wrote it.  Otherwise the tree is parsed and re-serialized.
    """
    at_text = edxml.fmt_timestamp(at or edxml.now_vn())
    certificate = xmldsig.certificate_text(hub.cert_pem)
    value = seal.sign(hub.private_key, seal.statement(hub.organ_id, at_text, sender_signature(raw)))
    ends = list(_THL_END.finditer(raw))
    if len(ends) == 1 and hub.organ_id.replace(".", "").isalnum():
        prefix = (ends[0].group(1) or b"").decode("ascii")
        trace = (
            f"<{prefix}TraceHeader><{prefix}OrganId>{hub.organ_id}</{prefix}OrganId>"
            f"<{prefix}Timestamp>{at_text}</{prefix}Timestamp>"
            f'<dbt:Seal xmlns:dbt="{seal.NS}" Certificate="{certificate}">{value}</dbt:Seal>'
            f"</{prefix}TraceHeader>"
        ).encode("ascii")
        cut = ends[0].start()
        return Relay(raw[:cut] + trace + raw[cut:], at_text, certificate, value)
    root = safexml.parse(raw, Limits(max_envelope_bytes=len(raw) + 1))
    thl = root.find(f"{{{edxml.NS}}}edXMLEnvelope/{{{edxml.NS}}}edXMLHeader/{{{edxml.NS}}}TraceHeaderList")
    if thl is None:
        return Relay(raw, at_text, certificate, value)
    th = etree.SubElement(thl, edxml.q("TraceHeader"))
    etree.SubElement(th, edxml.q("OrganId")).text = hub.organ_id
    etree.SubElement(th, edxml.q("Timestamp")).text = at_text
    etree.SubElement(th, seal.TAG, Certificate=certificate, nsmap={"dbt": seal.NS}).text = value
    return Relay(edxml.serialize(root), at_text, certificate, value)


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
    relayed = (
        check_hub_traces(hub_traces, sig.findtext(f"{{{edxml.DSIG_NS}}}SignatureValue") or "", trust, at)
        if hub_traces
        else []
    )
    relayed_at = edxml.parse_timestamp(relayed[0].timestamp) if relayed and trust.revocations is not None else None
    if relayed_at is not None:
        # the data centre accepted it then, with the signer's certificate valid and unrevoked:
        # a recipient that takes it in later judges the signer as of that sealed time
        signer = trust.ca.check(cert, at=relayed_at, revoked_serials=trust.revoked_as_of(relayed_at))
    else:
        signer = trust.ca.check(cert, at=at, revoked_serials=trust.revoked_serials)
    signed = xmldsig.verify(root, cert)
    message = edxml.parse_tree(signed, trust.limits)
    if message.sender.organ_id != signer:
        raise SignatureRejected(
            f"From/OrganId {message.sender.organ_id} is not the signer's OrganId {signer}", reason="sender-mismatch"
        )
    if any(t.organ_id == trust.hub_organ_id for t in message.traces[1:]):
        raise SignatureRejected(
            "a TraceHeader in the data centre's name inside the signed content: only the data centre adds"
            " one, sealed, after the sender signed",
            reason="trace-forged",
        )
    edxml.check_attachments(message, trust.limits.max_decoded_bytes)
    message.traces.extend(relayed)
    return Opened(
        root=signed,
        message=message,
        signer=signer,
        certificate=cert,
        digest=digest,
        signature_digest=digest_value,
        relayed=relayed,
    )


def read_unverified_edoc(data: bytes, limits: Limits) -> edxml.Edoc:
    """A document that reached an agency outside this bus, read but **not verified**.

    For sao lục of a central document that came another way (the national document axis, a
    ministry's system, a file handed over): its signer is not under the provincial CA, and
    real national-axis traffic carries placeholder signatures, so nothing here can vouch
    for it.  Security: whatever uses the result must say that the original is unverified,
    and the bytes are still hostile: safe parse with its bounds (the file up to
    ``max_outside_file_bytes``, as such a file carries its files inside), the lenient XSD
    that every real implementer's sample passes, the edXML model, the manifest.  A status,
    or a document that names a file outside its envelope (this bus's large-file
    reference, which an outside file cannot bring), is refused.
    """
    outside = replace(limits, max_envelope_bytes=max(limits.max_envelope_bytes, limits.max_outside_file_bytes))
    root = safexml.parse(data, outside, huge_text=True)
    msg = edxml.parse_tree(root, outside)
    if not isinstance(msg, edxml.Edoc):
        raise Refused(f"the file is a status ({msg.status_code}), not a document", reason="not-edoc")
    schema.validate(root, "lenient")
    edxml.check_manifest(root)
    edxml.check_attachments(msg, outside.max_decoded_bytes)
    outside_files = [a.name for a in msg.attachments if a.external is not None]
    if outside_files:
        raise Refused(
            f"{', '.join(outside_files)}: named by reference, not carried inside the file", reason="external-file"
        )
    return msg


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
