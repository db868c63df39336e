"""Finding documents in the archive: filters, and full text without diacritics.

Officials type "cong van ve viec ket noi" and expect "Công văn V/v kết nối": the archive
keeps a folded copy of each document's words (lower case, no diacritics, đ -> d, the
abbreviation "V/v" also spelled out as "về việc") and the query is folded the same way.
SQLite indexes it with FTS5, PostgreSQL with a GIN tsvector index; every word must match
whole (a Vietnamese syllable is a word: "ket" finds "kết", "ke" does not), because prefix
matching over a million documents costs ten to thirty times more.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from peewee import SQL, Model, SqliteDatabase, TextField, fn
from playhouse.sqlite_ext import RowIDField

from bus.archive import Message, Recipient, StatusEvent, db
from bus.edxml import Edoc, nfc, vn_day_start
from bus.policy import fold

ABBREVIATIONS = {"v/v": "v/v ve viec", "q/d": "q/d quyet dinh", "ubnd": "ubnd uy ban nhan dan", "cv": "cv cong van"}
_WORD = re.compile(r"[0-9a-z]+")


def folded(*parts: str) -> str:
    words = fold(" ".join(p for p in parts if p)).split()
    return " ".join(ABBREVIATIONS.get(w, w) for w in words)


def sender_token(organ_id: str) -> str:
    """A word naming the sender inside the full-text index, so "these words from that agency" is
    one index intersection instead of a join (``000.00.05.H61`` -> ``from000000005h61``)."""
    return "from" + re.sub(r"[^0-9a-z]", "", organ_id.lower())


def text_of(edoc: Edoc) -> str:
    """What the full-text index holds for an edoc."""
    return (
        sender_token(edoc.sender.organ_id)
        + " "
        + folded(
            edoc.subject,
            edoc.content if edoc.content != edoc.subject else "",
            edoc.type_name,
            edoc.code,
            edoc.sender.name,
            edoc.promulgation_place,
            *(a.name for a in edoc.attachments),
        )
    )


def text_of_record(msg: Message) -> str:
    """The same from an archived row's metadata (used when migrating older archives)."""
    return (
        sender_token(msg.sender)
        + " "
        + folded(msg.subject or "", msg.type_name or "", f"{msg.code_number}/{msg.code_notation}")
    )


def terms(text: str) -> list[str]:
    return _WORD.findall(folded(text))


class MessageFTS(Model):
    """The SQLite FTS5 index over ``message.search_text`` (created by bus.migrations)."""

    rowid = RowIDField()
    search_text = TextField()

    class Meta:
        database = db
        table_name = "message_fts"


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
        q = q.where(Message.type_name == nfc(filters.type_name))  # archived precomposed (edxml.nfc)
    if filters.number:
        number, _, notation = nfc(filters.number).partition("/")
        q = q.where(Message.code_number == number)
        if notation:
            q = q.where(Message.code_notation == notation)
    if filters.since:  # Vietnamese days (edxml.vn_day_start)
        q = q.where(Message.received_at >= vn_day_start(filters.since))
    if filters.until:
        q = q.where(Message.received_at < vn_day_start(filters.until + dt.timedelta(days=1)))
    if filters.priority is not None:
        q = q.where(Message.priority == filters.priority)
    if filters.status:
        has_status = StatusEvent.select(SQL("1")).where(
            (StatusEvent.document_id == Message.document_id) & (StatusEvent.status_code == filters.status)
        )
        q = q.where(fn.EXISTS(has_status))
    order = Message.id.desc()
    if filters.text:
        words = terms(filters.text)
        if words:
            if isinstance(Message._meta.database.obj, SqliteDatabase):
                match = " ".join(f'"{w}"' for w in words)  # whole words: a prefix scan costs 10-30x
                if filters.sender:
                    match += f' "{sender_token(filters.sender)}"'
                if filters.recipient or filters.number or filters.status:
                    # a selective filter leads; the matching rowids are read once into a lookup list
                    # (the unary + keeps SQLite from driving the query from that list instead)
                    q = q.where(SQL("+t1.id IN (SELECT rowid FROM message_fts WHERE message_fts MATCH ?)", [match]))
                else:
                    # the index leads, newest match first: a page of a common word stops after 20 rows
                    q = q.join(MessageFTS, on=(MessageFTS.rowid == Message.id)).where(
                        SQL("message_fts MATCH ?", [match])
                    )
                    order = MessageFTS.rowid.desc()
            else:
                tsq = " & ".join(words)
                q = q.where(SQL("to_tsvector('simple', search_text) @@ to_tsquery('simple', %s)", [tsq]))
    # arrival order: the archive is append-only, so the id is the order messages arrived in
    return q.order_by(order)


COUNT_CAP = 1000


def search(filters: Filters, *, page: int = 1, per_page: int = 20) -> tuple[list[Message], int]:
    """One page of results and the number of matches, counted up to ``COUNT_CAP`` (then "1000+"):
    an exact count of a common word over millions of documents costs more than the page itself.

    One pass finds the ids (newest first, capped), which gives both the count and the page;
    then only the page's rows are read.
    """
    q = build(filters)
    ids = [row.id for row in q.select(Message.id).limit(COUNT_CAP + 1)]
    first = (page - 1) * per_page
    if first + per_page > len(ids) and len(ids) > COUNT_CAP:  # a page beyond the cap: ask for it directly
        return list(q.paginate(page, per_page)), len(ids)
    page_ids = ids[first : first + per_page]
    by_id = {m.id: m for m in Message.select().where(Message.id.in_(page_ids))} if page_ids else {}
    return [by_id[i] for i in page_ids if i in by_id], len(ids)
