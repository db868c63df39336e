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

import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peewee import (
    AutoField,
    BlobField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    Model,
    OperationalError,
    SqliteDatabase,
    TextField,
)
from playhouse.db_url import connect

from bus.errors import ConfigError, NotFound

db = DatabaseProxy()
SCHEMA_VERSION = 1


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
    status_code = CharField(max_length=4, null=True)
    response_for_organ = CharField(max_length=64, null=True)  # statuses: the edoc's sender
    received_at = DateTimeField(default=utcnow, index=True)


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


class Meta(Base):
    key = CharField(primary_key=True, max_length=64)
    value = TextField()


MODELS = [Agency, Certificate, Blob, Message, Recipient, StatusEvent, Failure, DeadLetter, Meta]


def open_database(url: str) -> Any:
    """Connect the models to ``url`` (``sqlite:///path`` or ``postgresql://...``) and create tables."""
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            database = connect(
                url, pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10000, "synchronous": "normal"}
            )
        else:
            database = connect(url)
        db.initialize(database)
        database.connect(reuse_if_open=True)
        database.create_tables(MODELS, safe=True)
        Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()
    except OperationalError as exc:
        raise ConfigError(f"cannot open the archive database {url}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"DOCBUS_DB_URL {url!r} is not a database URL: {exc}") from exc
    return database


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Archive:
    """Operations on the central archive; every write is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = open_database(url)

    def write(self) -> Any:
        """A write transaction.  On SQLite it takes the write lock at BEGIN (IMMEDIATE), so
        concurrent writers wait for each other (busy timeout) instead of failing to upgrade."""
        if isinstance(self.database, SqliteDatabase):
            return self.database.atomic(lock_type="IMMEDIATE")
        return self.database.atomic()

    def close(self) -> None:
        if not self.database.is_closed():
            self.database.close()

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
    ) -> tuple[Message, bool]:
        """Archive ``raw`` with its metadata; return (record, created).  Idempotent by digest.

        ``keep``: store only the first ``keep`` bytes (an oversized refusal must not fill the disk);
        ``Message.size`` still says how many arrived.
        """
        digest = sha256(raw)
        existing = Message.get_or_none(Message.digest == digest)
        if existing is not None:
            return existing, False
        try:
            with self.write():
                kept = raw if keep is None else raw[:keep]
                Blob.insert(sha256=digest, size=len(kept), data=kept).on_conflict_ignore().execute()
                msg = Message.create(digest=digest, size=len(raw), **fields)
                rows = [{"message": msg.id, "organ_id": r} for r in dict.fromkeys(recipients)]
                if rows:
                    Recipient.insert_many(rows).execute()
                if status is not None:
                    StatusEvent.create(message=msg, **status)
            return msg, True
        except IntegrityError:
            # another router archived the same bytes between our check and our insert
            return Message.get(Message.digest == digest), False

    def undelivered(self, message: Message) -> list[str]:
        return [
            r.organ_id
            for r in Recipient.select().where((Recipient.message == message) & (Recipient.delivered_at.is_null()))
        ]

    def mark_delivered(self, message: Message, organ_ids: Iterable[str]) -> None:
        ids = list(organ_ids)
        if ids:
            Recipient.update(delivered_at=utcnow()).where(
                (Recipient.message == message) & (Recipient.organ_id.in_(ids))
            ).execute()

    def raw(self, message: Message) -> bytes:
        return bytes(Blob.get_by_id(message.digest).data)

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
