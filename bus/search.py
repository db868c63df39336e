"""Finding documents in the archive: filters, and full text without diacritics.

Officials type "cong van ve viec ket noi" and expect "Công văn V/v kết nối": the archive
keeps a folded copy of each document's words (lower case, no diacritics, đ -> d, the
abbreviation "V/v" also spelled out as "về việc") and the query is folded the same way.
SQLite indexes it with FTS5, PostgreSQL with a GIN tsvector index; every term must match,
as a prefix.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from peewee import SQL, SqliteDatabase

from bus.archive import Message, Recipient, StatusEvent
from bus.edxml import Edoc
from bus.policy import fold

ABBREVIATIONS = {"v/v": "v/v ve viec", "q/d": "q/d quyet dinh", "ubnd": "ubnd uy ban nhan dan", "cv": "cv cong van"}
_WORD = re.compile(r"[0-9a-z]+")


def folded(*parts: str) -> str:
    words = fold(" ".join(p for p in parts if p)).split()
    return " ".join(ABBREVIATIONS.get(w, w) for w in words)


def text_of(edoc: Edoc) -> str:
    """What the full-text index holds for an edoc."""
    return folded(
        edoc.subject,
        edoc.content if edoc.content != edoc.subject else "",
        edoc.type_name,
        edoc.code,
        edoc.sender.name,
        edoc.promulgation_place,
        *(a.name for a in edoc.attachments),
    )


def text_of_record(msg: Message) -> str:
    """The same from an archived row's metadata (used when migrating older archives)."""
    return folded(msg.subject or "", msg.type_name or "", f"{msg.code_number}/{msg.code_notation}")


def terms(text: str) -> list[str]:
    return _WORD.findall(folded(text))


@dataclass
class Filters:
    sender: str | None = None
    recipient: str | None = None
    type_name: str | None = None
    number: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    priority: int | None = None
    status: str | None = None
    text: str | None = None
    state: str = "accepted"
    kinds: tuple[str, ...] = field(default=("edoc",))


def build(filters: Filters) -> Any:
    """A peewee query of Message rows matching ``filters``, newest first."""
    q = Message.select().where(Message.kind.in_(filters.kinds))
    if filters.state != "any":
        q = q.where(Message.state == filters.state)
    if filters.sender:
        q = q.where(Message.sender == filters.sender)
    if filters.recipient:
        q = q.where(Message.id.in_(Recipient.select(Recipient.message).where(Recipient.organ_id == filters.recipient)))
    if filters.type_name:
        q = q.where(Message.type_name == filters.type_name)
    if filters.number:
        number, _, notation = filters.number.partition("/")
        q = q.where(Message.code_number == number)
        if notation:
            q = q.where(Message.code_notation == notation)
    if filters.since:
        q = q.where(Message.received_at >= dt.datetime.combine(filters.since, dt.time()))
    if filters.until:
        q = q.where(Message.received_at < dt.datetime.combine(filters.until + dt.timedelta(days=1), dt.time()))
    if filters.priority is not None:
        q = q.where(Message.priority == filters.priority)
    if filters.status:
        q = q.where(
            Message.document_id.in_(
                StatusEvent.select(StatusEvent.document_id).where(StatusEvent.status_code == filters.status)
            )
        )
    if filters.text:
        words = terms(filters.text)
        if words:
            database = Message._meta.database.obj  # the proxy's real database
            if isinstance(database, SqliteDatabase):
                match = " ".join(f'"{w}"*' for w in words)
                q = q.where(Message.id.in_(SQL("(SELECT rowid FROM message_fts WHERE message_fts MATCH ?)", [match])))
            else:
                tsq = " & ".join(f"{w}:*" for w in words)
                q = q.where(SQL("to_tsvector('simple', search_text) @@ to_tsquery('simple', %s)", [tsq]))
    return q.order_by(Message.received_at.desc(), Message.id.desc())


def search(filters: Filters, *, page: int = 1, per_page: int = 20) -> tuple[list[Message], int]:
    q = build(filters)
    return list(q.paginate(page, per_page)), q.count()
