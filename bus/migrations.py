"""Schema migrations of the central archive.

A new database gets every table of the current models and the newest version number.  An
older one is brought up to date one numbered step at a time (each step in one transaction
where the database allows it), and ``meta.schema_version`` records where it is.  To change
the schema: change the models, then append a step here that does the same to an existing
database (``playhouse.migrate`` for columns, ``create_tables(safe=True)`` for tables).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from peewee import SqliteDatabase
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

from bus import archive as a

log = logging.getLogger("docbus.migrations")


def _migrator(database: Any) -> Any:
    return SqliteMigrator(database) if isinstance(database, SqliteDatabase) else PostgresqlMigrator(database)


def _v2_search_attachments_chain(database: Any) -> None:
    """v2: folded search text, content-addressed attachments, the hash chain, prune log."""
    m = _migrator(database)
    columns = _message_columns(database)
    ops = []
    for name, field in (
        ("search_text", a.Message.search_text),
        ("skeleton", a.Message.skeleton),
        ("pruned_at", a.Message.pruned_at),
    ):
        if name not in columns:
            ops.append(m.add_column("message", name, field))
    migrate(*ops)
    database.create_tables([a.AttachmentRecord, a.ChainEntry, a.ChainHead, a.PruneLog], safe=True)
    from bus import search

    for msg in _messages(database).where(a.Message.search_text == ""):
        a.Message.update(search_text=search.text_of_record(msg)).where(a.Message.id == msg.id).execute()
    chain_missing(database)


def _message_columns(database: Any) -> set[str]:
    return {c.name for c in database.get_columns("message")}


def _messages(database: Any) -> Any:
    """The message rows with the columns this version of the table has: a step must not ask
    for a column a later step adds."""
    present = _message_columns(database)
    return a.Message.select(*[f for f in a.Message._meta.sorted_fields if f.column_name in present])


def chain_missing(database: Any) -> int:
    """Append every message not yet on the chain (a database from before the chain existed)."""
    done = {c.message_id for c in a.ChainEntry.select(a.ChainEntry.message)}
    count = 0
    for msg in _messages(database).order_by(a.Message.id):
        if msg.id not in done:
            a.append_chain(msg)
            count += 1
    return count


def _v3_receipts(database: Any) -> None:
    """v3: receipt items waiting to go to their senders (bus.receipt), and when each
    document's receipt went out."""
    if "receipted_at" not in _message_columns(database):
        m = _migrator(database)
        migrate(m.add_column("message", "receipted_at", a.Message.receipted_at))
    database.create_tables([a.PendingReceipt], safe=True)


# version -> (what, step, whether the full-text index is built again after it).  Version 1
# is the first released schema.
STEPS: dict[int, tuple[str, Callable[[Any], None], bool]] = {
    2: ("search text, attachments, hash chain", _v2_search_attachments_chain, True),
    3: ("receipts", _v3_receipts, False),
}
LATEST = max(STEPS)


def version(database: Any) -> int:
    if "meta" not in database.get_tables():
        return 0
    row = a.Meta.get_or_none(a.Meta.key == "schema_version")
    return int(row.value) if row else 0


def upgrade(database: Any) -> int:
    """Create or migrate the archive schema; returns the version it is at."""
    current = version(database)
    if current == 0:
        database.create_tables(a.MODELS, safe=True)
        _install_search(database)
        a.Meta.insert(key="schema_version", value=str(LATEST)).on_conflict(
            conflict_target=[a.Meta.key], update={a.Meta.value: str(LATEST)}
        ).execute()
        return LATEST
    for target in range(current + 1, LATEST + 1):
        what, step, reindex = STEPS[target]
        log.warning("migrating the archive to schema version %d (%s)", target, what)
        with database.atomic():
            step(database)
            _install_search(database, rebuild=reindex)
            a.Meta.update(value=str(target)).where(a.Meta.key == "schema_version").execute()
    return max(current, LATEST)


def _install_search(database: Any, *, rebuild: bool = False) -> None:
    """The full-text index: FTS5 over the folded text on SQLite, a GIN tsvector on PostgreSQL."""
    if isinstance(database, SqliteDatabase):
        database.execute_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5("
            "search_text, content='message', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
        )
        database.execute_sql(
            "CREATE TRIGGER IF NOT EXISTS message_fts_ai AFTER INSERT ON message BEGIN "
            "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
        database.execute_sql(
            "CREATE TRIGGER IF NOT EXISTS message_fts_ad AFTER DELETE ON message BEGIN "
            "INSERT INTO message_fts(message_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); END"
        )
        database.execute_sql(
            "CREATE TRIGGER IF NOT EXISTS message_fts_au AFTER UPDATE OF search_text ON message BEGIN "
            "INSERT INTO message_fts(message_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); "
            "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
        if rebuild:  # index what the message table already holds
            database.execute_sql("INSERT INTO message_fts(message_fts) VALUES ('rebuild')")
    else:
        database.execute_sql(
            "CREATE INDEX IF NOT EXISTS message_search_gin ON message USING GIN (to_tsvector('simple', search_text))"
        )
    for sql in (
        "CREATE INDEX IF NOT EXISTS message_kind_state_received ON message (kind, state, received_at)",
        "CREATE INDEX IF NOT EXISTS message_sender_received ON message (sender, received_at)",
        "CREATE INDEX IF NOT EXISTS message_code ON message (code_number, code_notation)",
        "CREATE INDEX IF NOT EXISTS statusevent_doc_code ON statusevent (document_id, status_code)",
        "CREATE INDEX IF NOT EXISTS recipient_organ_message ON recipient (organ_id, message_id)",
        "CREATE INDEX IF NOT EXISTS message_type_priority ON message (type_name, priority)",
    ):
        database.execute_sql(sql)
