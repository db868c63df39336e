"""An agency's local store (SQLite): outbox, inbox and the statuses it received.

Each adapter has its own database file, so the models are made per database
(:func:`open_store`) instead of being bound globally: several adapters can live in one
process (the demo, the tests) without sharing tables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peewee import (
    BlobField,
    BooleanField,
    CharField,
    DatabaseError,
    DateTimeField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)

from bus.errors import ConfigError, one_line


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class Store:
    db: SqliteDatabase
    Outbox: Any
    Inbox: Any
    Upload: Any

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[None]:
        """A write transaction that takes SQLite's write lock at BEGIN: the adapter process and a
        'docbus send' in another process wait for each other instead of failing.

        ``durable=False`` for bookkeeping that may be redone (a document marked handed over,
        an answer marked published): its commit is not flushed to disk on its own, so a
        power cut may undo it, never a process crash.  SQLite keeps the order of commits, so
        the next durable commit makes it durable too.  Documents and outbox entries are
        always written durably: stored and acked must mean stored.
        """
        if durable or self.db.in_transaction():  # the enclosing transaction decides
            with self.db.atomic(lock_type="IMMEDIATE"):
                yield
            return
        self.db.execute_sql("PRAGMA synchronous = NORMAL")
        try:
            with self.db.atomic(lock_type="IMMEDIATE"):
                yield
        finally:
            self.db.execute_sql("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self.db.close()


def open_store(path: Path) -> Store:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 10000})

    class Base(Model):
        class Meta:
            database = db

    class Outbox(Base):
        """What this agency sends: stored durably before anything is published."""

        digest = CharField(max_length=64, unique=True)
        kind = CharField(max_length=16)
        document_id = CharField(max_length=500, index=True)
        recipients = TextField(default="")
        urgent = BooleanField(default=False)
        raw = BlobField()  # type: ignore[assignment]  # hides Model.raw: bus.statements uses ModelRaw
        created_at = DateTimeField(default=utcnow)
        published_at = DateTimeField(null=True, index=True)
        attempts = IntegerField(default=0)
        last_error = TextField(null=True)
        # when the data centre relayed it, from its sealed receipt (bus.receipt), UTC; and whether
        # the agency's system was told (Adapter.on_receipt: the drop folder)
        accepted_at = DateTimeField(null=True)
        receipt_handed = BooleanField(null=True)

    class Inbox(Base):
        """What this agency received, verified, once per message (deduped by digest)."""

        digest = CharField(max_length=64, unique=True)
        kind = CharField(max_length=16, index=True)
        state = CharField(max_length=16, default="new", index=True)  # new | handed | invalid
        reason = TextField(null=True)
        sender = CharField(max_length=64, index=True)
        document_id = CharField(max_length=500, index=True)
        code = CharField(max_length=300, default="")
        subject = TextField(default="")
        priority = IntegerField(default=0)
        status_code = CharField(max_length=4, null=True)
        superseded = CharField(max_length=16, null=True)
        raw = BlobField()  # type: ignore[assignment]  # hides Model.raw: bus.statements uses ModelRaw
        received_at = DateTimeField(default=utcnow)

    class Upload(Base):
        """A large file an outbox message names (bus.blobs): its chunks go out just before it."""

        outbox_digest = CharField(max_length=64, index=True)
        sha256 = CharField(max_length=64)
        size = IntegerField()
        chunk_size = IntegerField()

    try:
        db.connect(reuse_if_open=True)
        db.create_tables([Outbox, Inbox, Upload], safe=True)
        _add_missing_columns(db, Outbox)
    except DatabaseError as exc:  # a damaged file, or one that is not a database at all
        db.close()
        raise ConfigError(f"cannot open the agency's local store {path}: {one_line(exc)}") from exc
    return Store(db, Outbox, Inbox, Upload)


def _add_missing_columns(db: SqliteDatabase, model: Any) -> None:
    """Columns added to a model since an agency's store was made (each nullable): added in
    place, so an adapter upgraded over an old store keeps its outbox and inbox."""
    have = {c.name for c in db.get_columns(model._meta.table_name)}
    for f in model._meta.sorted_fields:
        if f.column_name not in have and f.null:
            ddl = db.get_sql_context().sql(f.ddl(db.get_sql_context())).query()[0]
            db.execute_sql(f"ALTER TABLE {model._meta.table_name} ADD COLUMN {ddl}")
