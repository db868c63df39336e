"""The central archive: every message as received, its metadata, deliveries and statuses.

peewee models over SQLite (WAL, the embedded default) or PostgreSQL (``DOCBUS_DB_URL``).
Original bytes are kept verbatim and content-addressed in :class:`Blob`, so a signature
re-verifies years later.  The agency registry lives here too: the router reads it to know
who may send and who may receive.

Idempotency: a message is keyed by the SHA-256 of its bytes; archiving the same bytes
twice returns the first record, so a redelivered submission finishes what a dead router
left undone instead of archiving or delivering twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peewee import (
    AutoField,
    BlobField,
    BooleanField,
    CharField,
    DatabaseError,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    Model,
    SqliteDatabase,
    TextField,
    Tuple,
    fn,
)
from playhouse.db_url import connect

from bus import statements
from bus.config import redact
from bus.errors import ConfigError, NotFound, one_line
from bus.receipt import Relayed

db = DatabaseProxy()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(Model):
    class Meta:
        database = db


class Agency(Base):
    """A participant of the bus, named by its OrganId."""

    organ_id = CharField(primary_key=True, max_length=64)
    name = CharField(max_length=500)
    parent = CharField(max_length=64, null=True, index=True)
    cert_pem = TextField()
    cert_serial = CharField(max_length=64)  # the current signing certificate
    enabled = BooleanField(default=True)
    broker_user = CharField(max_length=64, null=True)  # its own RabbitMQ user, when provisioned
    created_at = DateTimeField(default=utcnow)


class Certificate(Base):
    """Every certificate the CA issued to an agency: active, retiring (rotation overlap) or revoked."""

    serial = CharField(primary_key=True, max_length=64)  # hex
    organ_id = CharField(max_length=64, index=True)
    pem = TextField()
    not_after = DateTimeField()
    state = CharField(max_length=16, default="active")  # active | retiring | revoked
    retire_after = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)
    revoked_reason = TextField(null=True)
    issued_at = DateTimeField(default=utcnow)


class Blob(Base):
    sha256 = CharField(primary_key=True, max_length=64)
    size = IntegerField()
    data = BlobField()


class Message(Base):
    """One message as the router received it (edoc or status), accepted or quarantined."""

    id = AutoField()
    digest = CharField(max_length=64, unique=True)  # sha256 of the bytes as received
    content_digest = CharField(max_length=100, null=True, index=True)  # the signed DigestValue
    size = IntegerField(default=0)  # bytes received (the blob may keep only the head of an oversized refusal)
    kind = CharField(max_length=16)  # edoc | status | unknown
    state = CharField(max_length=16, index=True)  # accepted | quarantined
    reason = CharField(max_length=64, null=True)
    reason_detail = TextField(null=True)
    user_id = CharField(max_length=64, null=True)
    sender = CharField(max_length=64, index=True)
    document_id = CharField(max_length=500, index=True)
    code_number = CharField(max_length=100, default="")
    code_notation = CharField(max_length=200, default="")
    doc_type = CharField(max_length=100, default="")
    type_name = CharField(max_length=200, default="")
    subject = TextField(default="")
    promulgation_date = CharField(max_length=20, default="")
    priority = IntegerField(default=0)
    business_doc_type = IntegerField(default=0)
    related_document_id = CharField(max_length=500, null=True, index=True)  # what a revoke/update/replace is about
    search_text = TextField(default="")  # folded (no diacritics, lower case) subject, content, names, code
    skeleton = CharField(max_length=64, null=True)  # blob of the bytes with attachment payloads cut out
    pruned_at = DateTimeField(null=True)
    status_code = CharField(max_length=4, null=True)
    response_for_organ = CharField(max_length=64, null=True)  # statuses: the edoc's sender
    received_at = DateTimeField(default=utcnow, index=True)
    receipted_at = DateTimeField(null=True)  # accepted edocs: when the sender's receipt (bus.receipt) went out


class Recipient(Base):
    """One delivery of an accepted message to one agency's inbox."""

    message = ForeignKeyField(Message, backref="recipients", on_delete="CASCADE")
    organ_id = CharField(max_length=64, index=True)
    delivered_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("message", "organ_id"), True),)


class StatusEvent(Base):
    """Per-recipient status history of an edoc (01 arrived, 03 accepted, ...)."""

    document_id = CharField(max_length=500, index=True)
    edoc_sender = CharField(max_length=64)
    organ_id = CharField(max_length=64)  # who reported the status
    status_code = CharField(max_length=4)
    description = TextField(default="")
    timestamp = CharField(max_length=20, default="")
    received_at = DateTimeField(default=utcnow)
    message = ForeignKeyField(Message, backref="status_events", on_delete="CASCADE")


class Failure(Base):
    """The last unexpected error a router hit on a submission (why it was later dead-lettered)."""

    digest = CharField(primary_key=True, max_length=64)
    routing_key = CharField(max_length=300)
    attempts = IntegerField(default=0)
    last_error = TextField()
    updated_at = DateTimeField(default=utcnow)


class DeadLetter(Base):
    """A message the broker dead-lettered (delivery limit), moved here by ``docbus dead list``."""

    id = AutoField()
    digest = CharField(max_length=64, index=True)
    queue = CharField(max_length=300)
    routing_key = CharField(max_length=300)
    user_id = CharField(max_length=64, null=True)
    reason = TextField(default="")
    headers = TextField(default="{}")
    body = BlobField()
    dead_at = DateTimeField(default=utcnow)
    replayed_at = DateTimeField(null=True)


class AttachmentRecord(Base):
    """An attachment of an archived edoc; its payload is a content-addressed blob, stored once."""

    message = ForeignKeyField(Message, backref="attachments", on_delete="CASCADE")
    content_id = CharField(max_length=300)
    name = CharField(max_length=500)
    content_type = CharField(max_length=200)
    size = IntegerField()
    sha256 = CharField(max_length=64, index=True)  # of the decoded file
    payload = CharField(max_length=64)  # blob: the base64 text exactly as it was in the envelope

    class Meta:
        table_name = "attachment"


class ChainEntry(Base):
    """The tamper-evident chain: every archived message, in order, hashed with its predecessor."""

    seq = AutoField()
    message = ForeignKeyField(Message, unique=True, backref="chain", on_delete="RESTRICT")
    prev_hash = CharField(max_length=64)
    entry_hash = CharField(max_length=64)

    class Meta:
        table_name = "chain"


class ChainHead(Base):
    """One row: the newest entry's hash; locked by each append so concurrent routers serialise."""

    id = IntegerField(primary_key=True)
    seq = IntegerField(default=0)
    entry_hash = CharField(max_length=64, default="0" * 64)

    class Meta:
        table_name = "chain_head"


class PruneLog(Base):
    """What ``docbus archive prune`` removed, when, under which rule."""

    id = AutoField()
    at = DateTimeField(default=utcnow)
    before = DateTimeField()
    rule = TextField()
    messages = IntegerField()
    bytes_freed = IntegerField()


class PendingReceipt(Base):
    """A relayed document's receipt item (bus.receipt) not yet sent to its sender.

    Written in the same transaction as the marks of the deliveries it answers, so that a
    router acks a document once it is archived, delivered and its receipt is safe here, and
    sends receipts on its own clock, many items per sender, instead of holding acks until
    then.  ``router`` is the process that sends it; rows a router left behind when it died
    are taken over by another (:meth:`Archive.adopt_receipts`).  Deleted once sent.
    """

    id = AutoField()
    router = CharField(max_length=32)
    sender = CharField(max_length=64)
    digest = CharField(max_length=64)
    document_id = CharField(max_length=500)
    relayed_at = CharField(max_length=20)
    seal = TextField()
    written_at = DateTimeField(default=utcnow)


class Meta(Base):
    key = CharField(primary_key=True, max_length=64)
    value = TextField()


MODELS = [
    Agency,
    Certificate,
    Blob,
    Message,
    Recipient,
    StatusEvent,
    Failure,
    DeadLetter,
    AttachmentRecord,
    ChainEntry,
    ChainHead,
    PruneLog,
    PendingReceipt,
    Meta,
]


DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql")


def open_database(url: str) -> Any:
    """Connect the models to ``url`` (``sqlite:///path`` or ``postgresql://...``) and create tables.

    SQLite runs in WAL mode with ``synchronous = FULL``: every commit is on disk before it
    returns, because the router acks a submission to the broker right after the commit that
    archives it, and the broker then forgets it.  With ``NORMAL`` a power cut could roll back
    commits whose documents RabbitMQ had already let go (an fsync costs about 0.15 ms here;
    one commit covers a whole batch)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"DOCBUS_DB_URL {redact(url)!r}: the archive runs on SQLite (sqlite:///path/archive.db) "
            "or PostgreSQL (postgresql://user@host/db)"
        )
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            database = connect(
                url,
                pragmas={
                    "journal_mode": "wal",
                    "foreign_keys": 1,
                    "busy_timeout": 10000,
                    "synchronous": "full",
                },
            )
        else:
            database = connect(url)
        db.initialize(database)
        database.connect(reuse_if_open=True)
        from bus import migrations

        migrations.upgrade(database)
    except DatabaseError as exc:  # unreachable, refused, or not a database at all (a damaged file)
        raise ConfigError(f"cannot open the archive database {redact(url)}: {one_line(exc)}") from exc
    except ValueError as exc:
        raise ConfigError(f"DOCBUS_DB_URL {redact(url)!r} is not a database URL: {exc}") from exc
    return database


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_MARK = b"\x00docbus-blob:"  # NUL never occurs in XML, so a marker cannot collide with content


def split_payloads(raw: bytes, attachments: Iterable[Any]) -> tuple[bytes, list[dict[str, Any]]]:
    """Cut each attachment's base64 payload out of ``raw``; returns (skeleton, attachment rows)."""
    skeleton = raw
    parts: list[dict[str, Any]] = []
    for att in attachments:
        external = getattr(att, "external", None)
        if external is not None:  # a large file kept on disk beside the archive (bus.blobs)
            parts.append(
                {
                    "content_id": att.content_id[:300],
                    "name": att.name[:500],
                    "content_type": att.content_type[:200],
                    "size": external.size,
                    "sha256": external.sha256,
                    "payload": f"file:{external.chunk_size}",
                }
            )
            continue
        text = (att._encoded or "").encode("ascii", errors="ignore")
        if not text:
            continue
        digest = sha256(text)
        if skeleton.count(text) != 1:
            continue  # the parser normalised its line ends: keep it inside the envelope
        skeleton = skeleton.replace(text, _MARK + digest.encode() + b"\x00")
        parts.append(
            {
                "content_id": att.content_id[:300],
                "name": att.name[:500],
                "content_type": att.content_type[:200],
                "size": att.size,  # known since the gate decoded it (edxml.check_attachments)
                "sha256": att.sha256,
                "payload": digest,
                "_bytes": text,
            }
        )
    return skeleton, parts


def assemble(message: Message) -> bytes:
    """Put a stored message back together from its skeleton and payload blobs."""
    blob = Blob.get_or_none(Blob.sha256 == (message.skeleton or message.digest))
    if blob is None:
        raise NotFound(f"the stored bytes of message #{message.id} are missing")
    data = bytes(blob.data)
    while (i := data.find(_MARK)) >= 0:
        j = data.index(b"\x00", i + len(_MARK))
        digest = data[i + len(_MARK) : j].decode()
        part = Blob.get_or_none(Blob.sha256 == digest)
        if part is None:
            raise NotFound(f"attachment payload {digest} of message #{message.id} is missing")
        data = data[:i] + bytes(part.data) + data[j + 1 :]
    return data


def entry_hash(prev: str, m: Message) -> str:
    """What the chain commits to for one message: its bytes (digest) and its indexed metadata."""
    fields = [
        prev,
        m.digest,
        m.kind,
        m.state,
        m.reason or "",
        m.sender,
        m.document_id,
        m.received_at.isoformat(timespec="microseconds")
        if isinstance(m.received_at, dt.datetime)
        else str(m.received_at),
        m.subject or "",
        m.code_number or "",
        m.code_notation or "",
        m.type_name or "",
        str(m.priority),
        m.status_code or "",
        str(m.size),
    ]
    return sha256("\x1f".join(fields).encode())


def lock_chain_head() -> ChainHead:
    """The chain's head row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite's
    IMMEDIATE transaction already holds the only write lock)."""

    locking = not isinstance(db.obj, SqliteDatabase)

    def build(v: list[Any]) -> Any:
        query = ChainHead.select().where(ChainHead.id == v[0])
        return query.for_update() if locking else query

    def head() -> ChainHead | None:
        return statements.first(ChainHead, "chain-head", [1], build)

    current = head()
    if current is None:
        ChainHead.insert(id=1, seq=0, entry_hash="0" * 64).on_conflict_ignore().execute()
        current = head()
    return current  # type: ignore[return-value]


def append_chain(message: Message) -> ChainEntry:
    """Add ``message`` to the chain (inside the caller's write transaction)."""
    append_chain_many([message])
    return ChainEntry.get(ChainEntry.message == message)


def append_chain_many(messages: Sequence[Message], head: ChainHead | None = None) -> None:
    """Add ``messages`` to the chain in this order (inside the caller's write transaction).

    ``head``: the head as :func:`lock_chain_head` returned it in this transaction."""
    if not messages:
        return
    prev = (head or lock_chain_head()).entry_hash
    rows = []
    for m in messages:
        entry = entry_hash(prev, m)
        rows.append({"message": m.id, "prev_hash": prev, "entry_hash": entry})
        prev = entry
    statements.insert_many(ChainEntry, rows)
    statements.execute(
        ChainHead,
        "chain-advance",
        [messages[-1].id, prev, 1],
        lambda v: ChainHead.update(
            seq=ChainEntry.select(ChainEntry.seq).where(ChainEntry.message == v[0]), entry_hash=v[1]
        ).where(ChainHead.id == v[2]),
    )


def _mark_delivered(deliveries: Sequence[tuple[int, str]], at: dt.datetime) -> None:
    """Mark these deliveries, (message id, recipient OrganId), done ``at`` (inside the caller's
    write transaction: :meth:`Archive.record_many`'s ``delivered``).

    The message ids are named on their own as well: SQLite plans ``(message, organ_id) IN
    (two or more pairs)`` as a scan of every recipient ever archived (2.6 ms per batch at
    40,000 rows, growing with the archive), ``message IN (...)`` as index lookups.
    """
    now = Recipient.delivered_at.db_value(at)
    for i in range(0, len(deliveries), 400):
        pairs = statements.padded(deliveries[i : i + 400])
        ids = statements.padded(sorted({message for message, _ in pairs}))
        n = len(ids)
        statements.execute(
            Recipient,
            f"delivered-{n}",  # the shape: how many ids, then how many pairs
            [now, *ids, *(v for pair in pairs for v in pair)],
            lambda v, n=n: Recipient.update(delivered_at=v[0]).where(
                Recipient.message.in_(v[1 : 1 + n])
                & Tuple(Recipient.message, Recipient.organ_id).in_(list(zip(v[1 + n :: 2], v[2 + n :: 2], strict=True)))
            ),
        )


@dataclass(frozen=True)
class Delivered:
    """Deliveries the broker confirmed at one moment, not yet marked in the archive, and
    the receipts (bus.receipt) they earned their senders, to keep until ``router`` sends them."""

    at: dt.datetime
    pairs: Sequence[tuple[int, str]]  # (message id, recipient OrganId)
    receipts: Sequence[tuple[str, Relayed]] = ()  # (sender OrganId, item)
    router: str = ""


def _write_delivered(d: Delivered) -> None:
    """Mark ``d``'s deliveries and keep its receipts (inside the caller's write transaction)."""
    _mark_delivered(d.pairs, d.at)
    statements.insert_many(
        PendingReceipt,
        [
            {
                "router": d.router,
                "sender": sender,
                "digest": item.digest,
                "document_id": item.document_id,
                "relayed_at": item.relayed_at,
                "seal": item.seal,
                "written_at": d.at,
            }
            for sender, item in d.receipts
        ],
    )


@dataclass(frozen=True)
class Entry:
    """One message to archive: its bytes and what to index (see :meth:`Archive.record_many`)."""

    raw: bytes
    fields: dict[str, Any]
    recipients: Sequence[str] = ()
    status: dict[str, Any] | None = None
    keep: int | None = None  # store only the first ``keep`` bytes
    attachments: Sequence[Any] = ()  # bus.edxml.Attachment of a verified edoc

    @functools.cached_property
    def digest(self) -> str:
        return sha256(self.raw)


class Archive:
    """Operations on the central archive; every write is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = open_database(url)
        self._writer = threading.local()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction.

        On SQLite it takes the write lock at BEGIN (IMMEDIATE), so concurrent writers wait
        for each other instead of failing to upgrade; and before that an exclusive
        ``flock`` on ``<database>.lock``, because SQLite's own busy handler waits by
        sleeping up to 100 ms at a time, which several routers on one archive would spend
        most of their time in.  A waiter on ``flock`` wakes the moment the lock is free.
        """
        if not isinstance(self.database, SqliteDatabase):
            with self.database.atomic():
                yield
            return
        w = self._writer
        if getattr(w, "depth", 0):  # nested: the outer write holds both locks
            w.depth += 1
            try:
                with self.database.atomic():
                    yield
            finally:
                w.depth -= 1
            return
        if getattr(w, "fd", None) is None:
            w.fd = os.open(f"{self.database.database}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(w.fd, fcntl.LOCK_EX)
        w.depth = 1
        try:
            with self.database.atomic(lock_type="IMMEDIATE"):
                yield
        finally:
            w.depth = 0
            fcntl.flock(w.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if not self.database.is_closed():
            self.database.close()
        fd = getattr(self._writer, "fd", None)
        if fd is not None:
            os.close(fd)
            self._writer.fd = None

    # -- registry
    def add_agency(
        self, organ_id: str, name: str, cert_pem: str, serial: str, not_after: dt.datetime, parent: str | None = None
    ) -> Agency:
        with self.write():
            Agency.insert(
                organ_id=organ_id, name=name, parent=parent, cert_pem=cert_pem, cert_serial=serial, enabled=True
            ).on_conflict(
                conflict_target=[Agency.organ_id],
                update={
                    Agency.name: name,
                    Agency.parent: parent,
                    Agency.cert_pem: cert_pem,
                    Agency.cert_serial: serial,
                },
            ).execute()
            Certificate.insert(
                serial=serial, organ_id=organ_id, pem=cert_pem, not_after=not_after
            ).on_conflict_ignore().execute()
        return Agency.get_by_id(organ_id)

    def agency(self, organ_id: str) -> Agency:
        found = Agency.get_or_none(Agency.organ_id == organ_id)
        if found is None:
            raise NotFound(f"no agency {organ_id!r} is registered (see 'docbus agency list')")
        return found

    def agencies(self) -> list[Agency]:
        return list(Agency.select().order_by(Agency.organ_id))

    # -- messages
    def record(
        self,
        raw: bytes,
        *,
        fields: dict[str, Any],
        recipients: Iterable[str] = (),
        status: dict[str, Any] | None = None,
        keep: int | None = None,
        attachments: Iterable[Any] = (),
    ) -> tuple[Message, bool]:
        """Archive one message; see :meth:`record_many`."""
        entry = Entry(raw, fields, tuple(recipients), status, keep, tuple(attachments))
        return self.record_many([entry])[0]

    def record_many(
        self,
        entries: Sequence[Entry],
        *,
        absent: bool = False,
        delivered: Sequence[Delivered] = (),
        _again: bool = True,
    ) -> list[tuple[Message, bool]]:
        """Archive ``entries`` in one transaction; return (record, created) for each, in order.

        Idempotent by digest: bytes already archived (by anyone, or earlier in ``entries``)
        return the first record.  Attachment payloads are stored once, content-addressed, and
        cut out of the stored envelope, which :meth:`raw` puts back together byte for byte.
        ``Entry.keep`` stores only the head of an oversized refusal (``Message.size`` still
        says how many bytes arrived).  Every new message joins the hash chain in the same
        transaction.  One transaction for many messages is what lets a router archive
        thousands of documents a second: the per-commit cost, not the rows, dominates.

        ``absent``: the caller has just looked these digests up and found none archived, so
        they are inserted without looking again; one archived meanwhile by another writer
        fails the insert, and the whole call is retried the careful way.

        ``delivered``: earlier deliveries to mark done, and the receipts they earned, in
        the same transaction, which saves a router one commit per batch.
        """
        if not entries:
            if not delivered:
                return []
            with self.write():
                for d in delivered:
                    _write_delivered(d)
            return []
        digests = [e.digest for e in entries]
        try:
            found, fresh = self._insert(entries, absent, delivered)
        except IntegrityError:
            if not _again:
                raise
            # a writer outside the chain lock archived some of these first: take theirs
            return self.record_many(entries, delivered=delivered, _again=False)
        return [(found[d], d in fresh and i == digests.index(d)) for i, d in enumerate(digests)]

    def _insert(
        self, entries: Sequence[Entry], absent: bool = False, delivered: Sequence[Delivered] = ()
    ) -> tuple[dict[str, Message], set[str]]:
        """(every entry's record by digest, the digests archived now)."""
        with self.write():
            head = lock_chain_head()  # concurrent writers take turns from here on
            for d in delivered:
                _write_delivered(d)
            found = {} if absent else self.find(e.digest for e in entries)
            fresh: dict[str, Entry] = {}
            for e in entries:
                if e.digest not in found:
                    fresh.setdefault(e.digest, e)
            blobs: dict[str, bytes] = {}
            rows: list[dict[str, Any]] = []
            parts_of: dict[str, list[dict[str, Any]]] = {}
            now = utcnow()
            for digest, e in fresh.items():
                kept = e.raw if e.keep is None else e.raw[: e.keep]
                skeleton, parts = split_payloads(kept, e.attachments) if e.keep is None else (kept, [])
                skeleton_digest = sha256(skeleton)
                blobs[skeleton_digest] = skeleton
                for part in parts:
                    if "_bytes" in part:
                        blobs[part["payload"]] = part["_bytes"]
                parts_of[digest] = parts
                rows.append(
                    {"received_at": now}
                    | e.fields
                    | {"digest": digest, "size": len(e.raw), "skeleton": skeleton_digest}
                )
            statements.insert_many(
                Blob, [{"sha256": k, "size": len(v), "data": v} for k, v in blobs.items()], ignore=True
            )
            statements.insert_many(Message, rows)
            ids = dict(self._ids(list(fresh)))
            # the records as written (no need to read every column back)
            created = {row["digest"]: Message(id=ids[row["digest"]], **row) for row in rows}
            statements.insert_many(
                Recipient,
                [
                    {"message": created[d].id, "organ_id": r}
                    for d, e in fresh.items()
                    for r in dict.fromkeys(e.recipients)
                ],
            )
            statements.insert_many(
                AttachmentRecord,
                [
                    {k: v for k, v in part.items() if not k.startswith("_")} | {"message": created[d].id}
                    for d, parts in parts_of.items()
                    for part in parts
                ],
            )
            statements.insert_many(
                StatusEvent,
                [{"received_at": now} | e.status | {"message": created[d].id} for d, e in fresh.items() if e.status],
            )
            append_chain_many(sorted(created.values(), key=lambda m: m.id), head)
        return found | created, set(fresh)

    @staticmethod
    def _ids(digests: list[str]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for i in range(0, len(digests), 500):
            out.extend(
                statements.rows(
                    Message,
                    "ids",
                    statements.padded(digests[i : i + 500]),
                    lambda v: Message.select(Message.digest, Message.id).where(Message.digest.in_(v)),
                ).tuples()
            )
        return out

    @staticmethod
    def find(digests: Iterable[str]) -> dict[str, Message]:
        """Archived messages among ``digests``, by digest (one query)."""
        wanted = list(dict.fromkeys(digests))
        found: dict[str, Message] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            found |= {
                m.digest: m
                for m in statements.rows(
                    Message, "find", statements.padded(chunk), lambda v: Message.select().where(Message.digest.in_(v))
                )
            }
        return found

    def undelivered(self, message: Message) -> list[str]:
        return [r.organ_id for r in self.undelivered_many([message])]

    @staticmethod
    def undelivered_many(messages: Iterable[Message]) -> list[Recipient]:
        """Recipients of ``messages`` not yet delivered to (one query)."""
        ids = [m.id for m in messages]
        if not ids:
            return []
        return list(
            statements.rows(
                Recipient,
                "undelivered",
                statements.padded(ids),
                lambda v: (
                    Recipient.select(Recipient.id, Recipient.message, Recipient.organ_id)
                    .where(Recipient.message.in_(v) & Recipient.delivered_at.is_null())
                    .order_by(Recipient.id)
                ),
            )
        )

    # -- receipts waiting to go out (bus.receipt, Router.send_receipts)
    @staticmethod
    def receipts_to_send(router: str, limit: int) -> list[tuple[int, str, Relayed]]:
        """(row id, sender, item) of up to ``limit`` receipt items ``router`` is to send, oldest first."""
        rows = PendingReceipt.select().where(PendingReceipt.router == router).order_by(PendingReceipt.id).limit(limit)
        return [(r.id, r.sender, Relayed(r.digest, r.document_id, r.relayed_at, r.seal)) for r in rows]

    def receipts_sent(self, ids: Sequence[int]) -> None:
        """These receipt items went out: note when on their documents (the first time, if
        one went twice) and forget them (one transaction)."""
        if not ids:
            return
        now = utcnow()
        with self.write():
            for i in range(0, len(ids), 500):
                rows = PendingReceipt.id.in_(list(ids[i : i + 500]))
                Message.update(receipted_at=fn.COALESCE(Message.receipted_at, now)).where(
                    Message.digest.in_(PendingReceipt.select(PendingReceipt.digest).where(rows))
                ).execute()
                PendingReceipt.delete().where(rows).execute()

    def adopt_receipts(self, router: str, written_before: dt.datetime) -> int:
        """Make ``router`` the sender of receipt items another router wrote before
        ``written_before`` and never sent (it stopped or died meanwhile); returns how many.

        Looked at first without a write transaction: there are none nearly always.  The
        items adopted count as written now, so that two routers looking at once (on
        PostgreSQL, from different hosts) do not both take them."""
        orphaned = (PendingReceipt.router != router) & (PendingReceipt.written_at < written_before)
        if not PendingReceipt.select(PendingReceipt.id).where(orphaned).exists():
            return 0
        with self.write():
            return PendingReceipt.update(router=router, written_at=utcnow()).where(orphaned).execute()

    def raw(self, message: Message) -> bytes:
        """The message exactly as received (attachment payloads put back in place)."""
        return assemble(message)

    def find_edoc(self, document_id: str, sender: str | None = None) -> Message:
        query = Message.select().where(
            (Message.document_id == document_id) & (Message.kind == "edoc") & (Message.state == "accepted")
        )
        if sender:
            query = query.where(Message.sender == sender)
        found = query.order_by(Message.received_at.desc()).first()
        if found is None:
            raise NotFound(f"no accepted document {document_id!r} in the archive")
        return found

    def trace(self, document_id: str) -> dict[str, Any]:
        """Every hop and every status per recipient of ``document_id``, with times."""
        messages = list(
            Message.select()
            .where((Message.document_id == document_id) & (Message.kind == "edoc"))
            .order_by(Message.received_at)
        )
        if not messages:
            raise NotFound(f"no document {document_id!r} in the archive")
        out: dict[str, Any] = {"document_id": document_id, "submissions": []}
        for m in messages:
            recips = {r.organ_id: r for r in m.recipients}
            statuses = list(
                StatusEvent.select()
                .where((StatusEvent.document_id == document_id) & (StatusEvent.edoc_sender == m.sender))
                .order_by(StatusEvent.received_at)
            )
            out["submissions"].append(
                {
                    "sender": m.sender,
                    "subject": m.subject,
                    "code": f"{m.code_number}/{m.code_notation}",
                    "business_doc_type": m.business_doc_type,
                    "state": m.state,
                    "reason": m.reason,
                    "received_at": m.received_at.isoformat(sep=" ", timespec="seconds"),
                    # when the data centre's receipt told the sender (bus.receipt)
                    "receipted_at": m.receipted_at.isoformat(sep=" ", timespec="seconds") if m.receipted_at else None,
                    "recipients": [
                        {
                            "organ_id": organ,
                            "delivered_at": r.delivered_at.isoformat(sep=" ", timespec="seconds")
                            if r.delivered_at
                            else None,
                            "statuses": [
                                {
                                    "code": s.status_code,
                                    "description": s.description,
                                    "timestamp": s.timestamp,
                                    "received_at": s.received_at.isoformat(sep=" ", timespec="seconds"),
                                }
                                for s in statuses
                                if s.organ_id == organ
                            ],
                        }
                        for organ, r in recips.items()
                    ],
                    "other_statuses": [
                        {
                            "organ_id": s.organ_id,
                            "code": s.status_code,
                            "description": s.description,
                            "received_at": s.received_at.isoformat(sep=" ", timespec="seconds"),
                        }
                        for s in statuses
                        if s.organ_id not in recips
                    ],
                }
            )
        return out


RETENTION_RULE = (
    "accepted documents and their statuses are kept for good (they are the province's records); "
    "refused submissions and dead letters older than the cut-off lose their bytes, keeping "
    "their metadata and their place on the hash chain"
)


def prune(before: dt.datetime, database: Any) -> PruneLog:
    """Apply the retention rule to everything received before ``before`` (naive UTC) and log it."""
    freed = 0
    count = 0
    with database.atomic():
        targets = list(
            Message.select().where(
                (Message.state == "quarantined") & (Message.received_at < before) & Message.pruned_at.is_null()
            )
        )
        for m in targets:
            key = m.skeleton or m.digest
            others = (
                Message.select()
                .where(((Message.skeleton == key) | (Message.digest == key)) & (Message.id != m.id))
                .count()
            )
            if not others:
                blob = Blob.get_or_none(Blob.sha256 == key)
                if blob is not None:
                    freed += blob.size
                    blob.delete_instance()
            Message.update(pruned_at=utcnow()).where(Message.id == m.id).execute()
            count += 1
        dead = list(DeadLetter.select().where(DeadLetter.dead_at < before))
        for d in dead:
            freed += len(bytes(d.body))
            d.delete_instance()
        return PruneLog.create(before=before, rule=RETENTION_RULE, messages=count + len(dead), bytes_freed=freed)
