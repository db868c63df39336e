"""What a router's checks cost with nothing of docbus around them: the floor under its CPU.

The router's target is half of what a raw relay moves on the same broker.  Whether that is
within reach of any router written with this project's libraries is a question of CPU: the
two cores must carry, per document, the router's own work and RabbitMQ's.  This measures,
in this process and on the same pre-signed envelopes, only the library calls a router
cannot do without, each called directly, one step over all envelopes at a time:

- parse: lxml with entities, DTDs and the network off (the parser ``bus.safexml`` uses);
- schema: the strict XSD, compiled once (libxml2);
- digest: C14N of the envelope without its Signature, its SHA-256 against DigestValue;
- signature: C14N of SignedInfo and the RSA-2048 check (the signer's certificate read once);
- signed tree: the canonical bytes parsed again (only the verified tree reaches business logic);
- seal: the router's signature on the trace entry it appends (DESIGN.md: "the router signs
  its own receipts and trace entries"), ECDSA P-256, the cheapest key the bus allows;
- archive: the envelope's bytes, a link of the archive's hash chain and a line of words into
  SQLite (WAL, fsynced commits of 100, the words indexed by FTS5), as an archive that is
  written before the ack must.

Left out, so the floor is lower than any real router: the edXML model, the policy, the
certificate chain (one RSA check per new certificate), the broker's frames (the raw
relay's own CPU per message stands for those), the recipients and status tables.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from lxml import etree

from bus import safexml, schema
from signing.xmldsig import DSIG_NS, ENVELOPED, EXC_C14N, canonical_without

BATCH = 100  # documents per archive commit, as a router's batch under load
_SIG = f"{{{DSIG_NS}}}Signature"
_SIGNED_INFO = f"{{{DSIG_NS}}}SignedInfo"
_CERT = f".//{{{DSIG_NS}}}X509Certificate"
_VALUE = f"{{{DSIG_NS}}}SignatureValue"
_DIGEST = f"{_SIGNED_INFO}/{{{DSIG_NS}}}Reference/{{{DSIG_NS}}}DigestValue"
_TRANSFORM = f"{_SIGNED_INFO}/{{{DSIG_NS}}}Reference/{{{DSIG_NS}}}Transforms/{{{DSIG_NS}}}Transform"
_C14N_METHOD = f"{{{DSIG_NS}}}CanonicalizationMethod"


def _c14n(sig: etree._Element) -> str:
    """The content's canonicalization the Reference names (exclusive when it names none)."""
    named = [t.get("Algorithm") for t in sig.iterfind(_TRANSFORM) if t.get("Algorithm") != ENVELOPED]
    return named[0] if named else EXC_C14N


def checks_floor(envelopes: Sequence[bytes]) -> dict[str, float]:
    """CPU ms per document of each step above over ``envelopes``, and their ``total``."""
    keys: dict[str, rsa.RSAPublicKey] = {}
    roots: list[etree._Element] = []
    payloads: list[tuple[bytes, etree._Element]] = []
    spent: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> None:
        t0 = time.process_time()
        fn()
        spent[name] = 1000 * (time.process_time() - t0) / len(envelopes)

    def parse() -> None:
        roots.extend(etree.fromstring(e, parser=safexml.PARSER) for e in envelopes)

    def validate() -> None:
        for root in roots:
            schema.validate(root, "strict")

    def digest() -> None:
        for root in roots:
            sig = next(root.iter(_SIG))
            payload = canonical_without(root, sig, _c14n(sig))
            expected = base64.b64decode("".join(sig.findtext(_DIGEST).split()))
            if not hmac.compare_digest(hashlib.sha256(payload).digest(), expected):
                raise InvalidSignature("the signed content was changed")
            payloads.append((payload, sig))

    def signature() -> None:
        for _, sig in payloads:
            text = "".join(sig.findtext(_CERT).split())
            key = keys.get(text)
            if key is None:
                key = x509.load_der_x509_certificate(base64.b64decode(text)).public_key()
                if not isinstance(key, rsa.RSAPublicKey):
                    raise ValueError("the floor times RSA-signed envelopes, as the benchmark signs them")
                keys[text] = key
            info = sig.find(_SIGNED_INFO)
            exclusive = info.find(_C14N_METHOD).get("Algorithm") == EXC_C14N
            signed_info = etree.tostring(info, method="c14n", exclusive=exclusive, with_comments=False)
            value = base64.b64decode("".join(sig.findtext(_VALUE).split()))
            key.verify(value, signed_info, padding.PKCS1v15(), hashes.SHA256())

    def signed_tree() -> None:
        for payload, _ in payloads:
            etree.fromstring(payload, parser=safexml.PARSER)

    seal_key = ec.generate_private_key(ec.SECP256R1())

    def seal() -> None:
        for _, sig in payloads:
            value = "".join(sig.findtext(_VALUE).split()).encode()
            seal_key.sign(b"trace\n000.00.00.H61\n2026-11-28T10:00:00+07:00\n" + value, ec.ECDSA(hashes.SHA256()))

    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE message(id INTEGER PRIMARY KEY, digest TEXT UNIQUE, raw BLOB, chain TEXT, words TEXT)")
        db.execute("CREATE VIRTUAL TABLE message_fts USING fts5(words, content='message', content_rowid='id')")
        db.execute(
            "CREATE TRIGGER indexed AFTER INSERT ON message BEGIN"
            " INSERT INTO message_fts(rowid, words) VALUES (new.id, new.words); END"
        )

        def archive() -> None:
            head = b""
            for i in range(0, len(envelopes), BATCH):
                rows = []
                for n, e in enumerate(envelopes[i : i + BATCH], i):
                    digest = hashlib.sha256(e).hexdigest()
                    head = hashlib.sha256(head + digest.encode()).digest()
                    rows.append((digest, e, head.hex(), f"cong van kiem thu hieu nang so {n} from{n % 150:03d}"))
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO message(digest, raw, chain, words) VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")

        for name, fn in (
            ("parse", parse),
            ("schema", validate),
            ("digest", digest),
            ("signature", signature),
            ("signed_tree", signed_tree),
            ("seal", seal),
            ("archive", archive),
        ):
            step(name, fn)
        db.close()
    out = {name: round(ms, 4) for name, ms in spent.items()}
    out["total"] = round(sum(spent.values()), 4)
    return out
