"""The data centre's receipt: "your document was accepted, archived and relayed at this time".

When the router has archived a document and the broker has confirmed its deliveries, it
keeps the document's receipt item in the archive with the deliveries' marks, and every
second (at once when the bus is quiet) sends each sender one receipt listing what it
relayed of that sender's.  Each item carries the seal of the TraceHeader the router
appended to the delivered envelope (:mod:`signing.seal`): a signature by the data centre
over its OrganId, the relay time and the sender's own SignatureValue.  So a receipt costs the router no signature of its
own, and the sender can check each item against the envelope in its outbox: the proof
"the data centre relayed exactly what I signed, at this time" is the same one each
recipient holds, and a third party can check it.

A clerk whose recipient is offline for a day thus still learns, within a second or two, that
the document is in the recipient's inbox at the data centre; a refused document is
answered with a status 02 instead, as before.  Statuses get no receipt (the documents
are what clerks track; a refused status is still answered 02).

Security: a receipt is hostile input like any delivery.  :func:`read` bounds its size
and checks its shape; the adapter then takes an item only for a document in its own
outbox, and only when the seal verifies against that document's SignatureValue
(:func:`bus.envelope.check_hub_traces`): a forged or misdirected receipt changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bus.errors import MalformedEnvelope

KIND = "receipt"  # the x-docbus-kind header of a receipt in an agency's inbox
VERSION = 1
MAX_BYTES = 1024 * 1024  # a batch of a few hundred documents takes a few dozen KiB
MAX_ITEMS = 10_000


@dataclass(frozen=True)
class Relayed:
    """One document of a receipt: the submission's SHA-256, its DocumentId, and the sealed relay."""

    digest: str
    document_id: str
    relayed_at: str  # the TraceHeader's Timestamp, yyyy/MM/dd HH:mm:ss, Vietnam time
    seal: str  # base64 signature over signing.seal.statement(hub, relayed_at, SignatureValue)


@dataclass(frozen=True)
class Receipt:
    certificate: str  # the seal's certificate, base64 DER (the same for every item)
    items: tuple[Relayed, ...]


def build(certificate: str, items: Sequence[Relayed]) -> bytes:
    """The receipt's bytes: UTF-8 JSON (DocumentIds keep their Vietnamese letters)."""
    body = {
        "docbus-receipt": VERSION,
        "certificate": certificate,
        "documents": [
            {"digest": i.digest, "document_id": i.document_id, "relayed_at": i.relayed_at, "seal": i.seal}
            for i in items
        ],
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read(data: bytes) -> Receipt:
    """Parse a receipt, unverified; raises :class:`MalformedEnvelope` (``bad-receipt``) on
    anything but the shape :func:`build` writes."""
    if len(data) > MAX_BYTES:
        raise MalformedEnvelope(f"receipt of {len(data)} bytes, over {MAX_BYTES}", reason="bad-receipt")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedEnvelope(f"receipt is not UTF-8 JSON: {exc}", reason="bad-receipt") from exc
    if not isinstance(body, dict) or body.get("docbus-receipt") != VERSION:
        raise MalformedEnvelope(f"not a docbus receipt version {VERSION}", reason="bad-receipt")
    certificate, documents = body.get("certificate"), body.get("documents")
    if not isinstance(certificate, str) or not isinstance(documents, list) or len(documents) > MAX_ITEMS:
        raise MalformedEnvelope("receipt without a certificate or a list of documents", reason="bad-receipt")
    items = []
    for d in documents:
        fields = [d.get(k) for k in ("digest", "document_id", "relayed_at", "seal")] if isinstance(d, dict) else []
        if len(fields) != 4 or not all(isinstance(f, str) for f in fields):
            raise MalformedEnvelope("a receipt item is not four strings", reason="bad-receipt")
        items.append(Relayed(*fields))
    return Receipt(certificate, tuple(items))
