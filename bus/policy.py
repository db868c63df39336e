"""What the provincial directive allows on the bus, applied to verified messages only.

- a document marked secret (mật, tối mật, tuyệt mật: ``OtherInfo/SecurityLevel``) never
  travels on this network;
- a document without its electronic file is refused, unless it is urgent (priority khẩn
  or above) or declared paper-only (``Bussiness/Paper`` = 1: technical dossiers, design
  estimates);
- every recipient must be a registered, enabled agency, named once;
- a status must answer a document the archive holds, from one of its recipients (or its
  sender, for the recall request 13);
- a revocation (BussinessDocType 1) or update (2) names a document its sender already sent,
  and goes only to that document's recipients; a replacement (3) names documents its sender
  sent.  A revocation needs no electronic file.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Container, Sequence

from bus.edxml import Edoc, Status
from bus.errors import PolicyRefusal

SECRET_LEVELS = {"mat", "toi mat", "tuyet mat"}


# every combining mark of the Basic Multilingual Plane, dropped in one C-level translate
_NO_MARKS = {c: None for c in range(0x10000) if unicodedata.combining(chr(c))} | {ord("đ"): "d", ord("Đ"): "D"}


def fold(text: str) -> str:
    """Lower-case and without diacritics ("Tối Mật" -> "toi mat"; "đ" -> "d")."""
    return " ".join(unicodedata.normalize("NFKD", text).translate(_NO_MARKS).casefold().split())


REVOKE, UPDATE, REPLACE = 1, 2, 3


def related_document_ids(edoc: Edoc) -> list[str]:
    """The documents a revocation, update or replacement is about."""
    b = edoc.business
    if b.doc_type == REPLACE:
        return [r.document_id for r in b.replacements] or ([b.document_id] if b.document_id else [])
    if b.doc_type in (REVOKE, UPDATE):
        return [b.document_id or edoc.document_id]
    return []


def check_lifecycle(edoc: Edoc, original_recipients: Callable[[str], set[str] | None]) -> None:
    """``original_recipients(document_id)``: recipients of that document from this sender, or None."""
    for doc in related_document_ids(edoc):
        recips = original_recipients(doc)
        if recips is None:
            raise PolicyRefusal(
                f"{edoc.business.doc_type} refers to {doc!r}, which {edoc.sender.organ_id} never sent",
                reason="unknown-document",
            )
        if edoc.business.doc_type in (REVOKE, UPDATE):
            strangers = sorted({r.organ_id for r in edoc.recipients} - recips)
            if strangers:
                raise PolicyRefusal(f"{', '.join(strangers)} did not receive {doc!r}", reason="not-recipient")


def check_edoc(edoc: Edoc, known: Container[str]) -> None:
    """Everything the directive asks of a document, at the router (``known``: enabled agencies)."""
    check_secrecy(edoc)
    if not edoc.attachments and edoc.priority < 1 and edoc.business.paper != 1 and edoc.business.doc_type != REVOKE:
        raise PolicyRefusal(
            "document has no electronic file (attach it, mark it urgent, or declare it paper-only)",
            reason="no-electronic-file",
        )
    ids = [r.organ_id for r in edoc.recipients]
    if not ids:
        raise PolicyRefusal("document names no recipient", reason="no-recipient")
    dup = named_twice(ids)
    if dup:
        raise PolicyRefusal(f"recipient {dup} is named more than once", reason="duplicate-recipient")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise PolicyRefusal(f"unknown recipient(s): {', '.join(unknown)}", reason="unknown-recipient")


def named_twice(organ_ids: Sequence[str]) -> str | None:
    """The lowest OrganId a recipient list names more than once, or None; the sending CLI and
    the pickup folder refuse such a list before signing, as the router does."""
    return min((i for i, n in Counter(organ_ids).items() if n > 1), default=None)


def check_secrecy(edoc: Edoc) -> None:
    """A document marked secret never travels on this network.  The sending adapter applies
    this before signing, so such a document never leaves the agency; the router applies it
    again to whatever arrives (another implementation's adapter may not)."""
    level = fold(edoc.secrecy)
    if level in SECRET_LEVELS:
        raise PolicyRefusal(
            f"document is marked {edoc.secrecy!r}: secret documents never travel on the bus", reason="secret-document"
        )


def check_status(status: Status, edoc_recipients: Container[str] | None, edoc_sender: str | None) -> None:
    if edoc_recipients is None or edoc_sender is None:
        raise PolicyRefusal(
            f"status {status.status_code} answers unknown document {status.document_id!r}", reason="unknown-document"
        )
    who = status.sender.organ_id
    if status.status_code == "13":
        if who != edoc_sender:
            raise PolicyRefusal("only the sender of a document may request its recall (13)", reason="not-sender")
    elif who not in edoc_recipients:
        raise PolicyRefusal(f"{who} is not a recipient of {status.document_id!r}", reason="not-recipient")
