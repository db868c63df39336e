"""Compose and sign edocs and statuses the way this bus sends them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

from bus import edxml
from bus.edxml import Attachment, Business, Edoc, Organ, ResponseFor, StaffInfo, Status, TraceHeader
from bus.filenames import unique_name
from signing import xmldsig
from signing.identity import Identity


def document_id(organ_id: str, day: dt.date, number: str, notation: str) -> str:
    """``{OrganId},{yyyy/MM/dd},{CodeNumber}/{CodeNotation}`` as in the official samples."""
    return f"{organ_id},{edxml.fmt_date(day)},{edxml.nfc(number)}/{edxml.nfc(notation)}"


def distinct_content_ids(attachments: Sequence[Attachment]) -> list[Attachment]:
    """Two files with one name (scan.pdf from two folders) would share a ContentId, which the
    router's manifest check refuses: the later ones are numbered as file names are."""
    seen: set[str] = set()
    out = []
    for a in attachments:
        name, description = edxml.nfc(a.name), edxml.nfc(a.description)
        cid = unique_name(edxml.nfc(a.content_id), seen)
        same = (cid, name, description) == (a.content_id, a.name, a.description)
        out.append(a if same else replace(a, content_id=cid, name=name, description=description))
    return out


def new_edoc(
    sender: Organ,
    recipients: Sequence[Organ],
    *,
    subject: str,
    number: str,
    notation: str,
    type_name: str = "Công văn",
    doc_type: str = "1",
    priority: int = 0,
    attachments: Sequence[Attachment] = (),
    content: str = "",
    place: str = "Vĩnh Long",
    signer_name: str = "",
    business_doc_type: int = 0,
    related: Sequence[ResponseFor] = (),
    paper_only: bool = False,
    security_level: str = "",
    now: dt.datetime | None = None,
) -> Edoc:
    now = now or edxml.now_vn()
    # precomposed, whatever the clerk's typing tool produced (edxml.nfc)
    subject, number, notation, type_name, content, place, signer_name, security_level = map(
        edxml.nfc, (subject, number, notation, type_name, content, place, signer_name, security_level)
    )
    extra = {"SecurityLevel": security_level} if security_level else {}
    return Edoc(
        sender=sender,
        recipients=list(recipients),
        document_id=document_id(sender.organ_id, now.date(), number, notation),
        code_number=number,
        code_notation=notation,
        subject=subject,
        promulgation_place=place,
        promulgation_date=edxml.fmt_date(now.date()),
        doc_type=doc_type,
        type_name=type_name,
        content=content or subject,
        signer=edxml.SignerInfo(full_name=signer_name),
        priority=priority,
        response_for=list(related),
        traces=[TraceHeader(sender.organ_id, edxml.fmt_timestamp(now))],
        business=Business(
            doc_type=business_doc_type,
            reason=edxml.BUSINESS_DOC_TYPES.get(business_doc_type, ""),
            paper=1 if paper_only else 0,
        ),
        attachments=distinct_content_ids(attachments),
        extra=extra,
    )


def new_status(
    sender: Organ,
    *,
    edoc_sender: str,
    document_id: str,
    code: str,
    description: str = "",
    staff: StaffInfo | None = None,
    now: dt.datetime | None = None,
) -> Status:
    now = now or edxml.now_vn()
    return Status(
        sender=sender,
        response_for=ResponseFor(organ_id=edoc_sender, document_id=document_id),
        status_code=code,
        description=edxml.nfc(description) or edxml.STATUS_CODES.get(code, ""),
        timestamp=edxml.fmt_timestamp(now),
        staff=staff or StaffInfo(),
        traces=[TraceHeader(sender.organ_id, edxml.fmt_timestamp(now))],
    )


def sign(msg: edxml.Message, identity: Identity) -> bytes:
    return xmldsig.sign(edxml.build_tree(msg), identity.private_key, identity.cert_pem)
