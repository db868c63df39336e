"""Enveloped XMLDSig signatures over a whole edXML envelope.

What is signed: the whole document (``Reference URI=""`` with the enveloped-signature
transform and exclusive C14N), so the header, manifest and every attachment are covered.
Algorithms: RSA-SHA256 by default, ECDSA-P256-SHA256 allowed; SHA-1 is never accepted.

Security: :func:`verify` returns the tree that the signature covers; callers must read
only that tree, never the one they passed in (signature wrapping).  It does not decide
whether the certificate is trusted: :class:`signing.ca.CertificateAuthority` does that.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree
from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from bus import safexml
from bus.edxml import serialize
from bus.errors import SignatureRejected

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
RSA_SHA256 = SignatureMethod.RSA_SHA256.value
ECDSA_SHA256 = SignatureMethod.ECDSA_SHA256.value
ALLOWED_METHODS = frozenset({RSA_SHA256, ECDSA_SHA256})
SHA256_URI = DigestAlgorithm.SHA256.value
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0.value
C14N_METHODS = frozenset({EXC_C14N, CanonicalizationMethod.CANONICAL_XML_1_0.value})


def sign(root: etree._Element, key: object, cert_pem: bytes, *, ecdsa: bool = False) -> bytes:
    """Sign ``root`` (which holds a ``ds:Signature Id="placeholder"`` slot) and return its bytes.

    The signature is exactly the profile :func:`verify` accepts: one ``Reference URI=""``
    with the enveloped-signature transform and exclusive C14N, SHA-256, RSA-SHA256 (or
    ECDSA-SHA256), the certificate in ``KeyInfo``.  Built directly rather than through a
    general XMLDSig library, which spent most of its time copying trees; signxml's verifier
    accepts what this produces (tested).
    """
    if isinstance(key, bytes):
        key = serialization.load_pem_private_key(key, password=None)
    etree.indent(root, space="  ")
    slot = root.find(f".//{_ds('Signature')}")
    if slot is None:
        raise ValueError("the tree has no ds:Signature slot to fill")
    sig = etree.Element(_ds("Signature"), nsmap={"ds": DSIG_NS})
    sig.tail = slot.tail
    slot.getparent().replace(slot, sig)
    signed_info = etree.SubElement(sig, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(signed_info, _ds("SignatureMethod"), Algorithm=ECDSA_SHA256 if ecdsa else RSA_SHA256)
    ref = etree.SubElement(signed_info, _ds("Reference"), URI="")
    transforms = etree.SubElement(ref, _ds("Transforms"))
    etree.SubElement(transforms, _ds("Transform"), Algorithm=ENVELOPED)
    etree.SubElement(transforms, _ds("Transform"), Algorithm=EXC_C14N)
    etree.SubElement(ref, _ds("DigestMethod"), Algorithm=SHA256_URI)
    digest_value = etree.SubElement(ref, _ds("DigestValue"))
    digest_value.text = base64.b64encode(hashlib.sha256(canonical_without(root, sig, EXC_C14N)).digest()).decode()
    signed = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    etree.SubElement(sig, _ds("SignatureValue")).text = base64.b64encode(_signature_value(key, signed)).decode()
    x509_data = etree.SubElement(etree.SubElement(sig, _ds("KeyInfo")), _ds("X509Data"))
    etree.SubElement(x509_data, _ds("X509Certificate")).text = certificate_text(cert_pem)
    return serialize(root)


@functools.lru_cache(maxsize=64)
def certificate_text(cert_pem: bytes) -> str:
    """The certificate as X509Certificate holds it (base64 DER); an agency signs with one for months."""
    return base64.b64encode(x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)).decode()


def _signature_value(key: object, signed_info: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signed_info, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signed_info, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # XMLDSig wants r || s, not DER
    raise ValueError(f"unsupported signing key {type(key).__name__}")


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
        der = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise SignatureRejected("X509Certificate is not base64", reason="cert-unreadable") from exc
    return load_cert(der)


def verify(root: etree._Element, cert: x509.Certificate) -> etree._Element:
    """Verify the enveloped signature with ``cert``; return the signed tree (the only one to read).

    This checks one fixed profile rather than XMLDSig in general, which is both faster and
    narrower than a general verifier: exactly one ``ds:Signature``, exactly one
    ``Reference URI=""`` whose transforms are the enveloped-signature transform and at most
    one canonicalization, SHA-256 digests, RSA-SHA256 or ECDSA-SHA256, no
    ``InclusiveNamespaces``, no ``Object``, no XPath or XSLT transforms.  Everything else is
    refused before any cryptography runs.

    Security: the returned tree is re-parsed from the canonical bytes that were digested
    (comments dropped, the Signature removed), exactly what the signature covers; ``root``
    itself is left as it was and must not be read by business logic.
    """
    sigs = root.findall(f".//{{{DSIG_NS}}}Signature")
    if len(sigs) != 1:
        raise SignatureRejected(f"expected one XMLDSig Signature, found {len(sigs)}", reason="signature-invalid")
    sig = sigs[0]
    signed_info, signature_value = _profile(sig)
    refs = signed_info.findall(_ds("Reference"))
    ref = refs[0]
    transforms = [t.get("Algorithm") for t in ref.findall(f"{_ds('Transforms')}/{_ds('Transform')}")]
    if ENVELOPED not in transforms:
        raise SignatureRejected("the Reference lacks the enveloped-signature transform", reason="signature-scope")
    c14n_uris = [t for t in transforms if t != ENVELOPED]
    if len(c14n_uris) > 1 or any(t not in C14N_METHODS for t in c14n_uris):
        raise SignatureRejected(f"refused transforms: {', '.join(map(str, c14n_uris))}", reason="signature-algorithm")
    digest_method = ref.find(_ds("DigestMethod"))
    if digest_method is None or digest_method.get("Algorithm") != SHA256_URI:
        raise SignatureRejected("the digest must be SHA-256", reason="signature-algorithm")
    expected = _b64(ref.findtext(_ds("DigestValue")), "DigestValue")

    payload = canonical_without(root, sig, c14n_uris[0] if c14n_uris else EXC_C14N)
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), expected):
        raise SignatureRejected("signature does not verify: the signed content was changed", reason="signature-invalid")
    c14n_method = signed_info.find(_ds("CanonicalizationMethod"))
    algorithm = c14n_method.get("Algorithm") if c14n_method is not None else None
    _check_value(
        cert,
        signed_info.find(_ds("SignatureMethod")).get("Algorithm"),  # type: ignore[union-attr]
        etree.tostring(signed_info, method="c14n", exclusive=algorithm == EXC_C14N, with_comments=False),
        signature_value,
    )
    try:
        return etree.fromstring(payload, parser=safexml.PARSER)
    except etree.XMLSyntaxError as exc:  # canonical XML always parses; this is a defect, not input
        raise SignatureRejected(f"the signed content does not parse: {exc}", reason="signature-invalid") from exc


def _ds(local: str) -> str:
    return f"{{{DSIG_NS}}}{local}"


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except ValueError as exc:
        raise SignatureRejected(f"{what} is not base64", reason="signature-invalid") from exc


def _profile(sig: etree._Element) -> tuple[etree._Element, bytes]:
    """Check the Signature's shape against the one profile accepted; return SignedInfo and the value."""
    children = [c for c in sig if isinstance(c.tag, str)]
    tags = [c.tag for c in children]
    if tags != [_ds("SignedInfo"), _ds("SignatureValue"), _ds("KeyInfo")]:
        raise SignatureRejected(
            "the Signature must hold SignedInfo, SignatureValue and KeyInfo, nothing else", reason="signature-invalid"
        )
    signed_info = children[0]
    parts = [c for c in signed_info if isinstance(c.tag, str)]
    refs = [c for c in parts if c.tag == _ds("Reference")]
    if len(refs) != 1 or refs[0].get("URI") != "":
        raise SignatureRejected(
            'the signature must have one Reference with URI="" (the whole envelope)', reason="signature-scope"
        )
    if [c.tag for c in parts] != [_ds("CanonicalizationMethod"), _ds("SignatureMethod"), _ds("Reference")]:
        raise SignatureRejected("SignedInfo is not in the accepted profile", reason="signature-invalid")
    for method in signed_info.iter(_ds("CanonicalizationMethod"), _ds("Transform")):
        if len(method):  # InclusiveNamespaces, XPath, XSLT parameters: never in this profile
            raise SignatureRejected(
                f"{etree.QName(method).localname} with parameters is refused", reason="signature-algorithm"
            )
    c14n, method = parts[0].get("Algorithm"), parts[1].get("Algorithm")
    if c14n not in C14N_METHODS:
        raise SignatureRejected(f"refused canonicalization {c14n}", reason="signature-algorithm")
    if method not in ALLOWED_METHODS:
        raise SignatureRejected(f"refused signature method {method}", reason="signature-algorithm")
    return signed_info, _b64(children[1].text, "SignatureValue")


def canonical_without(root: etree._Element, sig: etree._Element, algorithm: str) -> bytes:
    """C14N of ``root`` with ``sig`` removed (the enveloped-signature transform); ``root`` is restored.

    The bytes a Reference ``URI=""`` digests: only the digest check makes them trustworthy."""
    parent = sig.getparent()
    index = parent.index(sig)
    previous = sig.getprevious()
    saved = previous.tail if previous is not None else parent.text
    if sig.tail:  # the text after the Signature stays where it was
        if previous is not None:
            previous.tail = (previous.tail or "") + sig.tail
        else:
            parent.text = (parent.text or "") + sig.tail
    parent.remove(sig)  # lxml keeps sig.tail on the detached element
    try:
        return etree.tostring(root, method="c14n", exclusive=algorithm == EXC_C14N, with_comments=False)
    finally:
        if previous is not None:
            previous.tail = saved
        else:
            parent.text = saved
        parent.insert(index, sig)


def _check_value(cert: x509.Certificate, method: str | None, signed_info: bytes, value: bytes) -> None:
    key = cert.public_key()
    try:
        if method == RSA_SHA256 and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, signed_info, padding.PKCS1v15(), hashes.SHA256())
        elif method == ECDSA_SHA256 and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(value) // 2
            if len(value) % 2 or half == 0:
                raise InvalidSignature
            der = encode_dss_signature(int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big"))
            key.verify(der, signed_info, ec.ECDSA(hashes.SHA256()))
        else:
            raise SignatureRejected(
                f"signature method {method} does not match the certificate's key", reason="signature-algorithm"
            )
    except InvalidSignature as exc:
        raise SignatureRejected(
            "signature does not verify: SignatureValue mismatch", reason="signature-invalid"
        ) from exc
