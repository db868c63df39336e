"""A signer's identity on disk: its OrganId, private key and certificate.

Each agency's lives in ``$DOCBUS_HOME/agencies/<OrganId>/``; the router's (the hub) in
``$DOCBUS_HOME/hub/``.  Security: ``key.pem`` is written 0600 and never leaves that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bus.errors import ConfigError
from signing.ca import CertificateAuthority, IssuePolicy, _write_private, cert_pem, key_pem, new_key

# a certificate ending within this many days is flagged (`docbus health`, `docbus cert list`),
# and a data centre key renewed by `docbus init`
RENEW_WITHIN_DAYS = 30


def hub_folders(home: Path) -> dict[str, Path]:
    """Where the data centre's two keys live under $DOCBUS_HOME: ``signing`` signs its edXML
    answers (the 02s), ``seal`` seals the TraceHeader the router appends (signing.seal)."""
    return {"signing": home / "hub", "seal": home / "hub" / "seal"}


@dataclass(frozen=True)
class Identity:
    organ_id: str
    name: str
    key_pem: bytes
    cert_pem: bytes

    @cached_property
    def private_key(self) -> object:
        """The parsed key, loaded once: parsing an RSA key costs more than a signature."""
        return load_pem_private_key(self.key_pem, password=None, unsafe_skip_rsa_key_validation=True)

    @classmethod
    def issue(
        cls, ca: CertificateAuthority, organ_id: str, name: str, folder: Path, policy: IssuePolicy = IssuePolicy()
    ) -> Identity:
        key = new_key(policy)
        cert = ca.issue(organ_id, name, key.public_key())
        ident = cls(organ_id, name, key_pem(key), cert_pem(cert))
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(folder / "key.pem", ident.key_pem)
        (folder / "cert.pem").write_bytes(ident.cert_pem)
        (folder / "name.txt").write_text(name, encoding="utf-8")
        return ident

    @classmethod
    def load(cls, organ_id: str, folder: Path, *, set_up_by: str = "docbus agency add") -> Identity:
        """The key and certificate ``set_up_by`` wrote under ``folder``."""
        try:
            return cls(
                organ_id,
                (folder / "name.txt").read_text(encoding="utf-8") if (folder / "name.txt").exists() else organ_id,
                (folder / "key.pem").read_bytes(),
                (folder / "cert.pem").read_bytes(),
            )
        except FileNotFoundError as exc:
            raise ConfigError(f"no key and certificate for {organ_id} under {folder}: run '{set_up_by}' first") from exc
