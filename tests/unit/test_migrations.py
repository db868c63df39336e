"""An archive made by the first schema version is migrated, not recreated."""

from __future__ import annotations

from bus import migrations, search
from bus.archive import Archive, Blob, ChainEntry, Message, db
from bus.router import Router, load_trust
from tests.helpers import signed_edoc

PC, DEPT = "000.00.00.H61", "000.00.01.H61"


def test_version_1_archive_is_migrated_to_the_latest(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    router.process(signed_edoc(p.settings, DEPT, [PC], subject="Công văn V/v kết nối"), routing_key=f"edoc.{DEPT}")
    database = db.obj
    m = Message.get()
    raw = p.archive.raw(m)
    Blob.insert(sha256=m.digest, size=len(raw), data=raw).execute()  # version 1 stored envelopes whole
    # take the archive back to schema version 1 (before search text, attachments and the chain)
    for sql in (
        "DROP TRIGGER message_fts_ai",
        "DROP TRIGGER message_fts_ad",
        "DROP TRIGGER message_fts_au",
        "DROP TABLE message_fts",
        "DROP TABLE chain",
        "DROP TABLE chain_head",
        "DROP TABLE attachment",
        "DROP TABLE prunelog",
        "DROP TABLE pendingreceipt",
        "ALTER TABLE message DROP COLUMN receipted_at",
        "ALTER TABLE message DROP COLUMN search_text",
        "ALTER TABLE message DROP COLUMN skeleton",
        "ALTER TABLE message DROP COLUMN pruned_at",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    ):
        database.execute_sql(sql)
    p.archive.close()
    reopened = Archive(p.settings.archive_url)
    assert migrations.version(reopened.database) == migrations.LATEST == 3
    assert ChainEntry.select().count() == Message.select().count() == 1
    assert "pendingreceipt" in reopened.database.get_tables()
    rows, total = search.search(search.Filters(text="cong van ve viec ket noi"))
    assert total == 1 and rows[0].subject == "Công văn V/v kết nối"
    # and the message still reads back byte-exact (stored whole before version 2)
    assert reopened.raw(rows[0]) == raw
    reopened.close()


def test_version_2_archive_gains_the_receipts_without_reindexing(archive_province, monkeypatch) -> None:
    """On SQLite and PostgreSQL."""
    p = archive_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    router.process(signed_edoc(p.settings, DEPT, [PC], subject="Công văn V/v kết nối"), routing_key=f"edoc.{DEPT}")
    database = db.obj
    database.execute_sql("DROP TABLE pendingreceipt")
    database.execute_sql("ALTER TABLE message DROP COLUMN receipted_at")
    database.execute_sql("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    p.archive.close()
    rebuilt: list[bool] = []
    install = migrations._install_search

    def spy(database, *, rebuild: bool = False) -> None:
        rebuilt.append(rebuild)
        install(database)

    monkeypatch.setattr(migrations, "_install_search", spy)
    reopened = Archive(p.settings.archive_url)
    try:
        assert migrations.version(reopened.database) == 3 and "pendingreceipt" in reopened.database.get_tables()
        assert True not in rebuilt  # a million documents' full-text index is not built again for a new table
        [m] = Message.select()
        assert m.subject == "Công văn V/v kết nối" and m.receipted_at is None  # sent before the column
    finally:
        reopened.close()
