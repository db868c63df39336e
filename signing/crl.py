"""The provincial revocation list (an X.509 CRL signed by the CA).

``docbus cert revoke`` writes it to ``$DOCBUS_HOME/ca/crl.pem`` and publishes it to every
agency's inbox; adapters accept it only if the CA's signature on it verifies, and keep the
newest one.  Security: a CRL is self-authenticating, so it may travel any channel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bus.errors import SignatureRejected
from signing.ca import CertificateAuthority


def build(
    ca: CertificateAuthority, revoked: Iterable[tuple[int, dt.datetime]], *, days: int = 7
) -> x509.CertificateRevocationList:
    if ca.key is None:
        raise SignatureRejected("the CA key is needed to sign a revocation list", reason="config")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


def to_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def load_verified(data: bytes, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a CRL and check the CA signed it; raises SignatureRejected otherwise."""
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise SignatureRejected(f"revocation list cannot be read: {exc}", reason="crl-invalid") from exc
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise SignatureRejected("revocation list is not signed by the provincial CA", reason="crl-invalid")
    return crl


def dated(crl: x509.CertificateRevocationList) -> dict[int, dt.datetime]:
    """Serial -> when it was revoked (UTC): a signature made before that still stands."""
    return {r.serial_number: r.revocation_date_utc for r in crl}


def revocations(path: Path, ca_cert: x509.Certificate) -> dict[int, dt.datetime]:
    """:func:`dated` of the CRL file at ``path`` (empty when there is none)."""
    if not path.exists():
        return {}
    return dated(load_verified(path.read_bytes(), ca_cert))
