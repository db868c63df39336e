"""The hub's seal on the TraceHeader it appends: who passed a document on, and when.

The router appends its own TraceHeader (its OrganId and the time) to every envelope it
delivers, after the sender signed.  The seal is a signature by the data centre over::

    docbus-trace:1 \\n <hub OrganId> \\n <Timestamp> \\n <the sender's SignatureValue>

so it binds the hub's time to exactly one signed envelope (the sender's SignatureValue
names both the content and its signer), and a recipient keeps a proof a third party can
check: "the data centre relayed this document at this time".

The seal key is the hub's own ECDSA P-256 identity (``$DOCBUS_HOME/hub/seal/``), certified
by the provincial CA with the hub's OrganId, not the RSA key the hub signs its edXML
answers with: the router seals every document it delivers, and a P-256 signature costs
about a seventh of an RSA-2048 one here (docs/performance-history.md, run DA).

Security: a seal proves nothing unless its certificate chains to the provincial CA, is
valid at the time of checking and not revoked, and names the hub's OrganId;
:func:`verify` checks all of that.  A seal on someone else's TraceHeader is never read.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from bus.errors import SignatureRejected
from signing.ca import CertificateAuthority, IssuePolicy, load_cert

NS = "urn:docbus:trace:1"
TAG = f"{{{NS}}}Seal"
POLICY = IssuePolicy(key_type="ec")  # what `docbus init` issues the seal key with
_CONTEXT = b"docbus-trace:1"


def statement(hub_organ_id: str, timestamp: str, sender_signature: str) -> bytes:
    """The bytes a seal signs (the sender's SignatureValue without whitespace)."""
    value = "".join(sender_signature.split())
    return b"\n".join((_CONTEXT, hub_organ_id.encode(), timestamp.encode(), value.encode("ascii")))


def sign(key: object, data: bytes) -> str:
    """The seal's value: base64 of an ECDSA (DER) or RSA PKCS#1 v1.5 signature, SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError(f"unsupported seal key {type(key).__name__}")
    return base64.b64encode(raw).decode("ascii")


@functools.lru_cache(maxsize=64)
def _certificate(text: str) -> tuple[x509.Certificate, object]:
    """A Seal's certificate and its key, read once: the hub seals with one key for months."""
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except ValueError as exc:
        raise SignatureRejected("not base64", reason="cert-unreadable") from exc
    cert = load_cert(der)
    return cert, cert.public_key()


def verify(
    ca: CertificateAuthority,
    hub_organ_id: str,
    certificate: str,
    value: str,
    data: bytes,
    *,
    at: dt.datetime | None = None,
    revoked_serials: frozenset[int] = frozenset(),
) -> x509.Certificate:
    """Check a seal: its certificate is the hub's, from the CA, valid, not revoked; its
    signature covers ``data``.  Raises :class:`SignatureRejected` (``trace-seal``)."""
    try:
        signature = base64.b64decode("".join(value.split()), validate=True)
    except ValueError as exc:
        raise SignatureRejected("the hub's trace seal is not base64", reason="trace-seal") from exc
    try:
        cert, pub = _certificate(certificate)
        organ_id = ca.check(cert, at=at, revoked_serials=revoked_serials)
    except SignatureRejected as exc:
        raise SignatureRejected(f"the hub's trace seal certificate: {exc}", reason="trace-seal") from exc
    if organ_id != hub_organ_id:
        raise SignatureRejected(
            f"the trace seal is by {organ_id}, not the data centre ({hub_organ_id})", reason="trace-seal"
        )
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureRejected("the trace seal's key type is not supported", reason="trace-seal")
    except InvalidSignature as exc:
        raise SignatureRejected(
            "the hub's trace seal does not match its TraceHeader and this envelope's signature", reason="trace-seal"
        ) from exc
    return cert
