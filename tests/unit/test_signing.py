"""XMLDSig over whole envelopes, certificates from the provincial CA, and what must fail."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from lxml import etree

from bus import edxml, safexml
from bus.envelope import Trust, append_hub_trace, open_envelope, sender_signature
from bus.errors import Refused, SignatureRejected
from bus.router import load_trust
from signing import seal
from signing.ca import CertificateAuthority, key_pem, load_cert, new_key
from signing.identity import Identity
from tests.conftest import interop_files
from tests.helpers import edoc, hub_seal, identity, signed_edoc

SENDER, RECIPIENT = "000.00.01.H61", "000.00.00.H61"


def refused(data: bytes, trust: Trust, **kw) -> str:
    with pytest.raises(SignatureRejected) as info:
        open_envelope(data, trust, **kw)
    return info.value.reason


def test_signed_edoc_verifies_and_reads_only_the_signed_tree(memory_province) -> None:
    s = memory_province.settings
    data = signed_edoc(s, SENDER, [RECIPIENT])
    opened = open_envelope(data, load_trust(s))
    assert opened.signer == SENDER
    assert opened.message.subject == "Công văn V/v kết nối"
    assert opened.message.attachments[0].data.startswith(b"%PDF")
    assert b"rsa-sha256" in data and b"xml-exc-c14n" in data


def test_hub_trace_is_appended_and_still_verifies(memory_province) -> None:
    s = memory_province.settings
    data = append_hub_trace(signed_edoc(s, SENDER, [RECIPIENT]), hub_seal(s))
    trust = load_trust(s)
    with pytest.raises(Refused) as info:  # as submitted to the router: no hub trace allowed
        open_envelope(data, trust)
    assert info.value.reason == "schema-invalid"  # the Seal is no part of an agency's edXML
    opened = open_envelope(data, trust, from_hub=True)
    assert [t.organ_id for t in opened.message.traces] == [SENDER, s.hub_organ_id]


def test_hub_trace_is_not_fooled_by_a_look_alike_end_tag(memory_province) -> None:
    """A comment holding a TraceHeaderList end tag makes the splice ambiguous: the tree is used."""
    s = memory_province.settings
    root = safexml.parse(signed_edoc(s, SENDER, [RECIPIENT]))
    root.find(f".//{{{edxml.NS}}}Subject").append(etree.Comment("</edXML:TraceHeaderList>"))
    data = append_hub_trace(edxml.serialize(root), hub_seal(s))
    opened = open_envelope(data, load_trust(s), from_hub=True)
    assert [t.organ_id for t in opened.message.traces] == [SENDER, s.hub_organ_id]
    spliced = append_hub_trace(signed_edoc(s, SENDER, [RECIPIENT]), hub_seal(s))
    assert b"TraceHeaderList" in spliced and open_envelope(spliced, load_trust(s), from_hub=True).message.traces[-1]


def _hub_trace(data: bytes) -> etree._Element:
    return safexml.parse(data).findall(f".//{{{edxml.NS}}}TraceHeader")[-1]


def test_hub_trace_seal_binds_time_and_envelope(memory_province) -> None:
    """The seal is the data centre's word on when it relayed this envelope: an altered time,
    a removed seal, a seal moved from another envelope or made with another key is refused."""
    s = memory_province.settings
    trust = load_trust(s)
    data = append_hub_trace(signed_edoc(s, SENDER, [RECIPIENT]), hub_seal(s))
    seal_el = _hub_trace(data).find(f"{{{seal.NS}}}Seal")
    assert seal_el is not None and seal_el.get("Certificate")
    stamp = _hub_trace(data).findtext(f"{{{edxml.NS}}}Timestamp")
    later = stamp[:-1] + ("1" if stamp[-1] != "1" else "2")
    at = data.rindex(f">{stamp}<".encode())  # the hub's, not the sender's of the same second
    altered = data[:at] + f">{later}<".encode() + data[at + len(stamp) + 2 :]
    assert refused(altered, trust, from_hub=True) == "trace-seal"

    def without_seal(root: etree._Element) -> None:
        th = root.findall(f".//{{{edxml.NS}}}TraceHeader")[-1]
        th.remove(th.find(f"{{{seal.NS}}}Seal"))

    root = safexml.parse(data)
    without_seal(root)
    assert refused(edxml.serialize(root), trust, from_hub=True) == "trace-seal"
    # the seal of another document's relay, on this one
    other = append_hub_trace(signed_edoc(s, SENDER, [RECIPIENT], subject="Công văn khác"), hub_seal(s))
    root = safexml.parse(data)
    th = root.findall(f".//{{{edxml.NS}}}TraceHeader")[-1]
    th.getparent().replace(th, _hub_trace(other))
    assert refused(edxml.serialize(root), trust, from_hub=True) == "trace-seal"
    # an agency's key, valid under the same CA, is not the data centre's
    agency = identity(s, RECIPIENT)
    forged = append_hub_trace(signed_edoc(s, SENDER, [RECIPIENT]), replace(agency, organ_id=s.hub_organ_id))
    assert refused(forged, trust, from_hub=True) == "trace-seal"
    # a seal certificate revoked since (the data centre's seal key leaked)
    cert = load_cert(hub_seal(s).cert_pem)
    assert refused(data, replace(trust, revoked_serials=frozenset({cert.serial_number})), from_hub=True) == "trace-seal"


def test_hub_trace_seal_reads_the_real_signature_value(memory_province) -> None:
    """A look-alike SignatureValue in a comment cannot make the router seal the wrong thing."""
    s = memory_province.settings
    root = safexml.parse(signed_edoc(s, SENDER, [RECIPIENT]))
    root.find(f".//{{{edxml.NS}}}Subject").append(etree.Comment("<SignatureValue>AAAA</SignatureValue>"))
    data = edxml.serialize(root)
    assert sender_signature(data) == "".join(root.findtext(f".//{{{edxml.DSIG_NS}}}SignatureValue").split())
    opened = open_envelope(append_hub_trace(data, hub_seal(s)), load_trust(s), from_hub=True)
    assert opened.message.traces[-1].organ_id == s.hub_organ_id


def test_tampered_header_fails(memory_province) -> None:
    s = memory_province.settings
    data = signed_edoc(s, SENDER, [RECIPIENT])
    bad = data.replace("V/v kết nối".encode(), "V/v kết lối".encode())
    assert refused(bad, load_trust(s)) == "signature-invalid"


def test_tampered_attachment_fails(memory_province) -> None:
    s = memory_province.settings
    data = signed_edoc(s, SENDER, [RECIPIENT])
    root = safexml.parse(data)
    body = root.find(f".//{{{edxml.NS}}}ContentTransferEncoded")
    body.text = "JVBERi0xLjQKJSBldmlsCg=="
    assert refused(edxml.serialize(root), load_trust(s)) == "signature-invalid"


def test_signature_by_another_agency_fails(memory_province) -> None:
    s = memory_province.settings
    data = signed_edoc(s, SENDER, [RECIPIENT], signer="000.00.02.H61")
    assert refused(data, load_trust(s)) == "sender-mismatch"


def test_certificate_from_another_ca_fails(memory_province, tmp_path) -> None:
    s = memory_province.settings
    rogue = CertificateAuthority.create(tmp_path / "rogue")
    Identity.issue(rogue, SENDER, "Giả mạo", tmp_path / "rogue-id")
    from bus import compose

    data = compose.sign(edoc(SENDER, [RECIPIENT]), Identity.load(SENDER, tmp_path / "rogue-id"))
    assert refused(data, load_trust(s)) == "cert-untrusted"


@pytest.mark.parametrize(("start", "days", "reason"), [(-800, 30, "cert-expired"), (30, 365, "cert-not-yet-valid")])
def test_certificate_outside_its_validity_fails(memory_province, tmp_path, start, days, reason) -> None:
    s = memory_province.settings
    ca = CertificateAuthority.load(s.home)
    key = new_key()
    cert = ca.issue(
        SENDER, "Sở Nội vụ", key.public_key(), days=days, not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=start)
    )
    from bus import compose
    from signing.ca import cert_pem

    data = compose.sign(edoc(SENDER, [RECIPIENT]), Identity(SENDER, "x", key_pem(key), cert_pem(cert)))
    assert refused(data, load_trust(s)) == reason


def test_revoked_certificate_fails(memory_province) -> None:
    s = memory_province.settings
    data = signed_edoc(s, SENDER, [RECIPIENT])
    serial = open_envelope(data, load_trust(s)).certificate.serial_number
    trust = load_trust(s)
    revoked = Trust(trust.ca, trust.hub_organ_id, frozenset({serial}))
    assert refused(data, revoked) == "cert-revoked"


def test_unsigned_and_placeholder_signatures_are_reported_not_verifiable(memory_province) -> None:
    trust = load_trust(memory_province.settings)
    assert refused(edxml.build(edoc(SENDER, [RECIPIENT])), trust) == "signature-absent"
    seen = set()
    for path in interop_files():
        if path.name == "vnpt-example__resources-edoc.edxml":
            continue
        reason = refused(path.read_bytes(), trust)
        expected = (
            "signature-absent"
            if edxml.signature_element(safexml.parse(path.read_bytes())) is None
            else "signature-unverifiable"
        )
        assert reason == expected, path.name
        seen.add(reason)
    assert seen == {"signature-absent", "signature-unverifiable"}


def test_second_signature_or_partial_reference_is_refused(memory_province) -> None:
    s = memory_province.settings
    trust = load_trust(s)
    data = signed_edoc(s, SENDER, [RECIPIENT])
    root = safexml.parse(data)
    ref = root.find(".//{http://www.w3.org/2000/09/xmldsig#}Reference")
    ref.set("URI", "#header")
    assert refused(edxml.serialize(root), trust) == "signature-scope"


def test_wrapped_signed_document_inside_a_forged_one_is_refused(memory_province) -> None:
    """Signature wrapping: the genuine signed envelope hidden inside a forged one."""
    s = memory_province.settings
    trust = load_trust(s)
    genuine = safexml.parse(signed_edoc(s, SENDER, [RECIPIENT]))
    forged = safexml.parse(signed_edoc(s, SENDER, [RECIPIENT], subject="Quyết định giả"))
    # put the genuine Signature into the forged envelope, replacing its own
    forged_sig = forged.find(".//{http://www.w3.org/2000/09/xmldsig#}Signature")
    genuine_sig = genuine.find(".//{http://www.w3.org/2000/09/xmldsig#}Signature")
    forged_sig.getparent().replace(forged_sig, genuine_sig)
    assert refused(edxml.serialize(forged), trust) == "signature-invalid"


def test_sha1_signature_is_refused(memory_province) -> None:
    from signxml import DigestAlgorithm, SignatureMethod, XMLSigner

    s = memory_province.settings
    ident = Identity.load(SENDER, s.agency_home(SENDER))
    tree = edxml.build_tree(edoc(SENDER, [RECIPIENT]))

    class LegacySigner(XMLSigner):
        def check_deprecated_methods(self) -> None:  # what an old implementation would still send
            pass

    signer = LegacySigner(
        signature_algorithm=SignatureMethod.RSA_SHA1,
        digest_algorithm=DigestAlgorithm.SHA1,
        c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#",
    )
    data = edxml.serialize(signer.sign(tree, key=ident.key_pem, cert=ident.cert_pem.decode()))
    assert refused(data, load_trust(s)) in {"signature-invalid", "signature-algorithm"}


def _signxml_verdict(data: bytes, cert) -> bool:
    """The reference answer: signxml's general verifier, limited to the same algorithms."""
    from signxml import SignatureConfiguration, XMLVerifier
    from signxml.exceptions import InvalidInput, InvalidSignature

    config = SignatureConfiguration(require_x509=True, location=".//", expect_references=1)
    try:
        XMLVerifier().verify(safexml.parse(data), x509_cert=cert, expect_config=config)
    except (InvalidSignature, InvalidInput, ValueError):
        return False
    return True


def _variants(good: bytes) -> dict[str, bytes]:
    def edit(change) -> bytes:
        root = safexml.parse(good)
        change(root)
        return edxml.serialize(root)

    ds = "{http://www.w3.org/2000/09/xmldsig#}"

    def flip_value(root) -> None:
        value = root.find(f".//{ds}SignatureValue")
        value.text = ("A" if value.text.strip()[0] != "A" else "B") + value.text.strip()[1:]

    def flip_digest(root) -> None:
        value = root.find(f".//{ds}DigestValue")
        value.text = ("A" if value.text.strip()[0] != "A" else "B") + value.text.strip()[1:]

    def add_comment(root) -> None:
        root.find(f".//{{{edxml.NS}}}Subject").append(etree.Comment(" ghi chú "))

    def move_signature_last(root) -> None:
        sig = root.find(f".//{ds}Signature")
        sig.getparent().append(sig)

    return {
        "as signed": good,
        "reserialized": edit(lambda root: None),
        "comment added (outside c14n)": edit(add_comment),
        "signature moved within the header": edit(move_signature_last),
        "subject changed": good.replace("kết nối".encode(), "kết lối".encode()),
        "signature value changed": edit(flip_value),
        "digest value changed": edit(flip_digest),
        "whitespace inside the subject": good.replace("kết nối".encode(), "kết  nối".encode()),
    }


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_profile_verifier_agrees_with_signxml(memory_province, tmp_path, key_type) -> None:
    """The fast fixed-profile verifier gives signxml's verdict on every variant (RSA and ECDSA)."""
    from signing import xmldsig
    from signing.ca import IssuePolicy

    s = memory_province.settings
    ca = CertificateAuthority.load(s.home)
    key = new_key(IssuePolicy(key_type=key_type))
    cert = ca.issue(SENDER, "Sở Nội vụ", key.public_key())
    from signing.ca import cert_pem

    data = xmldsig.sign(edxml.build_tree(edoc(SENDER, [RECIPIENT])), key, cert_pem(cert), ecdsa=key_type == "ec")
    verdicts = {}
    for name, variant in _variants(data).items():
        try:
            xmldsig.verify(safexml.parse(variant), cert)
            ours = True
        except SignatureRejected:
            ours = False
        verdicts[name] = ours
        assert ours == _signxml_verdict(variant, cert), name
    assert verdicts["as signed"] and verdicts["comment added (outside c14n)"]
    assert not verdicts["subject changed"] and not verdicts["signature value changed"]


def test_profile_verifier_returns_the_signed_tree_without_comments(memory_province) -> None:
    from signing import xmldsig

    s = memory_province.settings
    root = safexml.parse(signed_edoc(s, SENDER, [RECIPIENT]))
    root.find(f".//{{{edxml.NS}}}Subject").append(etree.Comment("unsigned"))
    before = etree.tostring(root)
    signed = xmldsig.verify(root, xmldsig.embedded_certificate(root))
    assert etree.tostring(root) == before  # the input tree is left as it was
    assert b"unsigned" not in etree.tostring(signed)
    assert signed.find(".//{http://www.w3.org/2000/09/xmldsig#}Signature") is None


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda si: si[0].set("Algorithm", "http://www.w3.org/2006/12/xml-c14n11"), "signature-algorithm"),
        (
            lambda si: etree.SubElement(si[0], "{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces"),
            "signature-algorithm",
        ),
        (
            lambda si: si[2].find("{http://www.w3.org/2000/09/xmldsig#}Transforms")[0].set("Algorithm", "urn:x"),
            "signature-scope",
        ),
        (
            lambda si: (
                si[2]
                .find("{http://www.w3.org/2000/09/xmldsig#}DigestMethod")
                .set("Algorithm", "http://www.w3.org/2001/04/xmldsig-more#sha384")
            ),
            "signature-algorithm",
        ),
        (
            lambda si: si.getparent().append(etree.Element("{http://www.w3.org/2000/09/xmldsig#}Object")),
            "signature-invalid",
        ),
    ],
    ids=["c14n-1.1", "inclusive-namespaces", "no-enveloped-transform", "sha384-digest", "object"],
)
def test_profile_verifier_refuses_what_is_outside_the_profile(memory_province, change, reason) -> None:
    from signing import xmldsig

    root = safexml.parse(signed_edoc(memory_province.settings, SENDER, [RECIPIENT]))
    change(root.find(".//{http://www.w3.org/2000/09/xmldsig#}SignedInfo"))
    with pytest.raises(SignatureRejected) as info:
        xmldsig.verify(root, xmldsig.embedded_certificate(root))
    assert info.value.reason == reason
