"""The provincial certificate authority.

``docbus init`` creates one (or ``CertificateAuthority.load`` reads an imported one) under
``$DOCBUS_HOME/ca``.  It issues each agency a signing certificate whose subject carries the
agency's OrganId in the UID attribute: that is how the router binds a signature to an
agency.  Security: ``ca.key`` is the root of trust of the whole province.  It is written
with mode 0600; keep it off any machine an agency controls.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.errors import ConfigError, SignatureRejected

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuePolicy:
    """How certificates are issued.  Secure defaults: RSA-2048 at least, two-year agency certificates."""

    key_type: str = "rsa"  # "rsa" or "ec" (P-256)
    rsa_bits: int = 2048
    agency_validity_days: int = 730
    ca_validity_days: int = 3650


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key(policy: IssuePolicy = IssuePolicy()) -> PrivateKey:
    if policy.key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=policy.rsa_bits)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes | str) -> x509.Certificate:
    if isinstance(data, str):
        data = data.encode()
    return _load_cert(bytes(data))


@functools.lru_cache(maxsize=4096)
def _load_cert(data: bytes) -> x509.Certificate:
    """Certificates are immutable and every agency signs with one of a few: parse each once."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SignatureRejected(f"certificate cannot be read: {exc}", reason="cert-unreadable") from exc


def organ_id_of(cert: x509.Certificate) -> str:
    """The OrganId the CA put in the certificate's subject (UID), or ''."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(attrs[0].value) if attrs else ""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: PrivateKey | None, policy: IssuePolicy = IssuePolicy()) -> None:
        self.cert = cert
        self.key = key
        self.policy = policy
        # certificates whose CA signature already verified (equal when their DER is equal), with
        # their validity and OrganId read once; validity and revocation are still checked on
        # every call: they depend on the time and the CRL
        self._issued: dict[x509.Certificate, tuple[dt.datetime, dt.datetime, str]] = {}

    # -- storage
    @staticmethod
    def paths(home: Path) -> tuple[Path, Path]:
        return home / "ca" / "ca.pem", home / "ca" / "ca.key"

    @classmethod
    def create(
        cls, home: Path, name: str = "Vĩnh Long Provincial CA", policy: IssuePolicy = IssuePolicy()
    ) -> CertificateAuthority:
        key = new_key(IssuePolicy(key_type=policy.key_type, rsa_bits=max(policy.rsa_bits, 3072)))
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=policy.ca_validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(cert, key, policy)
        ca.save(home)
        return ca

    def save(self, home: Path) -> None:
        cert_path, key_path = self.paths(home)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert_pem(self.cert))
        if self.key is not None:
            _write_private(key_path, key_pem(self.key))

    @classmethod
    def load(cls, home: Path, *, need_key: bool = True) -> CertificateAuthority:
        cert_path, key_path = cls.paths(home)
        if not cert_path.exists():
            raise ConfigError(f"no provincial CA under {home}: run 'docbus init' first")
        key = None
        if need_key:
            if not key_path.exists():
                raise ConfigError(f"the CA key {key_path} is missing; this machine cannot issue certificates")
            key = serialization.load_pem_private_key(
                key_path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
            )
        return cls(load_cert(cert_path.read_bytes()), key)  # type: ignore[arg-type]

    @classmethod
    def exists(cls, home: Path) -> bool:
        return cls.paths(home)[0].exists()

    # -- issuing
    def issue(
        self,
        organ_id: str,
        name: str,
        public_key: object,
        *,
        days: int | None = None,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        if self.key is None:
            raise ConfigError("this CA was loaded without its key and cannot issue certificates")
        start = not_before or (_now() - dt.timedelta(minutes=5))
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name[:64] or organ_id),
                x509.NameAttribute(NameOID.COMMON_NAME, organ_id),
                x509.NameAttribute(NameOID.USER_ID, organ_id),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days if days is not None else self.policy.agency_validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    # -- checking
    def check(
        self, cert: x509.Certificate, *, at: dt.datetime | None = None, revoked_serials: frozenset[int] = frozenset()
    ) -> str:
        """Check that ``cert`` is an agency certificate issued by this CA and valid at ``at``.

        Returns the OrganId inside it.  Raises :class:`SignatureRejected` with a specific reason.
        """
        at = at or _now()
        facts = self._issued.get(cert)
        if facts is None:
            self._check_issuer(cert)
            if len(self._issued) > 4096:
                self._issued.clear()
            facts = self._issued[cert] = (cert.not_valid_before_utc, cert.not_valid_after_utc, organ_id_of(cert))
        not_before, not_after, organ_id = facts
        if at < not_before:
            raise SignatureRejected(
                f"certificate is not valid before {not_before:%Y-%m-%d %H:%M}", reason="cert-not-yet-valid"
            )
        if at > not_after:
            raise SignatureRejected(f"certificate expired on {not_after:%Y-%m-%d %H:%M}", reason="cert-expired")
        if revoked_serials and cert.serial_number in revoked_serials:
            raise SignatureRejected(f"certificate {cert.serial_number:x} is revoked", reason="cert-revoked")
        if not organ_id:
            raise SignatureRejected("certificate carries no OrganId", reason="cert-untrusted")
        return organ_id

    def _check_issuer(self, cert: x509.Certificate) -> None:
        """The CA's signature on ``cert`` (the expensive part of :meth:`check`, done once per certificate)."""
        if cert.issuer != self.cert.subject:
            raise SignatureRejected("certificate was not issued by the provincial CA", reason="cert-untrusted")
        try:
            pub = self.cert.public_key()
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:  # Ed25519/Ed448: this CA signs with RSA or ECDSA and a hash
                raise SignatureRejected("certificate signature algorithm is not the CA's", reason="cert-untrusted")
            if isinstance(pub, rsa.RSAPublicKey):
                pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
            elif isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
            else:  # pragma: no cover - the CA is created RSA or EC
                raise SignatureRejected("unsupported CA key type", reason="cert-untrusted")
        except Exception as exc:
            if isinstance(exc, SignatureRejected):
                raise
            raise SignatureRejected(
                "certificate signature does not verify against the provincial CA", reason="cert-untrusted"
            ) from exc
