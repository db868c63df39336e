"""Enveloped XMLDSig signatures over a whole edXML envelope.

What is signed: the whole document (``Reference URI=""`` with the enveloped-signature
transform and exclusive C14N), so the header, manifest and every attachment are covered.
Algorithms: RSA-SHA256 by default, ECDSA-P256-SHA256 allowed; SHA-1 is never accepted.

Security: :func:`verify` returns the tree that the signature covers; callers must read
only that tree, never the one they passed in (signature wrapping).  It does not decide
whether the certificate is trusted: :class:`signing.ca.CertificateAuthority` does that.
"""

from __future__ import annotations

from cryptography import x509
from lxml import etree
from signxml import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConfiguration,
    SignatureMethod,
    XMLSigner,
    XMLVerifier,
)
from signxml.exceptions import InvalidInput, InvalidSignature

from bus.edxml import serialize
from bus.errors import SignatureRejected

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
ALLOWED_METHODS = frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.ECDSA_SHA256})
_CONFIG = SignatureConfiguration(
    require_x509=True,
    location=".//",
    expect_references=1,
    signature_methods=ALLOWED_METHODS,
    digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
)


def sign(root: etree._Element, key: bytes | object, cert_pem: bytes, *, ecdsa: bool = False) -> bytes:
    """Sign ``root`` (which holds a ``ds:Signature Id="placeholder"`` slot) and return its bytes."""
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA256 if ecdsa else SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    etree.indent(root, space="  ")
    signed = signer.sign(root, key=key, cert=cert_pem.decode())
    return serialize(signed)


def embedded_certificate(root: etree._Element) -> x509.Certificate:
    """The signer's certificate from ``ds:KeyInfo`` (not yet trusted)."""
    from signing.ca import load_cert

    sigs = root.findall(f".//{{{DSIG_NS}}}Signature")
    if len(sigs) != 1:
        raise SignatureRejected(f"expected one XMLDSig Signature, found {len(sigs)}", reason="signature-invalid")
    certs = sigs[0].findall(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate")
    if len(certs) != 1:
        raise SignatureRejected(
            f"expected one X509Certificate in KeyInfo, found {len(certs)}", reason="signature-invalid"
        )
    text = "".join((certs[0].text or "").split())
    try:
        import base64

        der = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise SignatureRejected("X509Certificate is not base64", reason="cert-unreadable") from exc
    return load_cert(der)


def verify(root: etree._Element, cert: x509.Certificate) -> etree._Element:
    """Verify the enveloped signature with ``cert``; return the signed tree (the only one to read)."""
    sigs = root.findall(f".//{{{DSIG_NS}}}Signature")
    if len(sigs) != 1:
        raise SignatureRejected(f"expected one XMLDSig Signature, found {len(sigs)}", reason="signature-invalid")
    refs = sigs[0].findall(f"{{{DSIG_NS}}}SignedInfo/{{{DSIG_NS}}}Reference")
    if len(refs) != 1 or refs[0].get("URI") != "":
        raise SignatureRejected(
            'the signature must have one Reference with URI="" (the whole envelope)', reason="signature-scope"
        )
    try:
        result = XMLVerifier().verify(root, x509_cert=cert, expect_config=_CONFIG)
    except InvalidSignature as exc:
        raise SignatureRejected(f"signature does not verify: {exc}", reason="signature-invalid") from exc
    except InvalidInput as exc:
        raise SignatureRejected(f"signature is not acceptable: {exc}", reason="signature-invalid") from exc
    except ValueError as exc:  # unknown algorithm URIs become enum ValueErrors
        raise SignatureRejected(f"signature uses a refused algorithm: {exc}", reason="signature-algorithm") from exc
    signed = result.signed_xml  # type: ignore[union-attr]
    if signed is None or signed.tag != root.tag:
        raise SignatureRejected("the signature does not cover the whole envelope", reason="signature-scope")
    return signed
