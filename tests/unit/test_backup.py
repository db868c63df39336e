"""``docbus archive backup``: a copy that verifies, taken while a router writes (real SQLite files)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters import Adapter
from bus.archive import Archive, ChainHead, Message
from bus.audit import verify_archive
from bus.backup import backup_archive
from bus.blobs import ChunkStore
from bus.router import Router, Submission, load_trust
from cli import EXIT_CONFIG, EXIT_FAILED, main
from tests.helpers import PDF, alter_first_byte, signed_edoc

PC, DEPT = "000.00.00.H61", "000.00.01.H61"


def env_for(p) -> dict[str, str]:
    return {
        "DOCBUS_HOME": str(p.settings.home),
        "DOCBUS_NAMESPACE": p.settings.namespace,
        "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
        "DOCBUS_DB_URL": p.settings.db_url,
    }


def router_of(p) -> Router:
    return Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)


def send_documents(p, tmp_path, *, large: bool = True) -> str:
    """Two ordinary documents and, with ``large``, one with a 200 KB file (over the 64 KiB
    inline limit of ``small_inline``); returns the large file's digest."""
    big = tmp_path / "ban-do-quy-hoach.tif"
    big.write_bytes(hashlib.sha256(b"seed").digest() * 6400)
    scan = tmp_path / "cong-van.pdf"
    scan.write_bytes(PDF)
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        dept.send([PC], subject="Công văn V/v kết nối", number="1", notation="SNV", files=[scan])
        dept.send([PC], subject="Quyết định phê duyệt", number="2", notation="SNV", files=[scan])
        if large:
            dept.send([PC], subject="Bản đồ quy hoạch", number="3", notation="SNV", files=[big])
    router_of(p).run()
    return hashlib.sha256(big.read_bytes()).hexdigest()


def submissions(docs: list[bytes]) -> list[Submission]:
    return [Submission(d, f"edoc.{DEPT}", "guest", False, {}) for d in docs]


def verify_copy(p, folder):
    """Open the copy as the archive and walk its chain, its bytes, its signatures and its files."""
    Archive(f"sqlite:///{folder / 'archive.db'}")
    trust = replace(load_trust(p.settings), revoked_serials=frozenset())
    return verify_archive(trust, files=ChunkStore(folder))


def test_backup_copies_an_archive_that_verifies_with_its_large_files(small_inline, tmp_path) -> None:
    p = small_inline
    digest = send_documents(p, tmp_path)
    messages, head = Message.select().count(), ChainHead.get()
    folder = tmp_path / "sao-luu" / "2026-11-28"

    result = CliRunner().invoke(main, ["archive", "backup", str(folder), "--json"], env=env_for(p))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["messages"], report["chain_entries"], report["chain_head"]) == (messages, head.seq, head.entry_hash)
    assert (report["files"], report["file_bytes"], report["altered_files"], report["ok"]) == (1, 204800, [], True)
    assert json.loads((folder / "backup.json").read_text(encoding="utf-8"))["chain_head"] == head.entry_hash
    assert not (folder / "archive.db-wal").exists()  # one self-contained file

    checked = verify_copy(p, folder)
    assert checked.ok, checked.first_problem
    assert checked.entries == head.seq
    assert hashlib.sha256((folder / "files" / digest[:2] / digest).read_bytes()).hexdigest() == digest
    subjects = {m.subject for m in Message.select()}
    assert {"Công văn V/v kết nối", "Bản đồ quy hoạch"} <= subjects  # diacritics intact in the copy


def test_a_backup_taken_while_the_router_writes_is_one_consistent_snapshot(memory_province, tmp_path) -> None:
    p = memory_province
    docs = [signed_edoc(p.settings, DEPT, [PC], number=str(i)) for i in range(120)]
    router = router_of(p)
    router.process_batch(submissions(docs[:20]))
    started = threading.Event()

    def keep_routing() -> None:
        for i in range(20, len(docs), 5):
            router.process_batch(submissions(docs[i : i + 5]))
            started.set()

    writer = threading.Thread(target=keep_routing)
    writer.start()
    started.wait(10)
    result = backup_archive(p.settings, tmp_path / "copy")
    writer.join()
    assert Message.select().count() == 120
    assert 20 <= result.messages <= 120 and result.chain_entries == result.messages
    with sqlite3.connect(tmp_path / "copy" / "archive.db") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    checked = verify_copy(p, tmp_path / "copy")
    assert checked.ok, checked.first_problem
    assert checked.entries == result.chain_entries  # the chain ends where the snapshot did


def test_an_altered_large_file_is_named_and_not_copied(small_inline, tmp_path) -> None:
    p = small_inline
    digest = send_documents(p, tmp_path)
    stored = ChunkStore(p.settings.home / "blobs").file(digest)
    alter_first_byte(stored)
    leftover = stored.with_name(f".{digest}.4242.tmp")  # what a write cut short leaves
    leftover.write_bytes(b"half a file")

    result = CliRunner().invoke(main, ["archive", "backup", str(tmp_path / "copy")], env=env_for(p))
    assert result.exit_code == EXIT_FAILED, result.output
    assert f"ALTERED, not copied: large file {digest}" in result.output
    assert f"skipped {leftover}: not a stored file" in result.output
    assert not (tmp_path / "copy" / "files" / digest[:2] / digest).exists()
    assert (tmp_path / "copy" / "archive.db").exists()  # the rest is still copied


def test_a_folder_already_holding_something_is_refused(memory_province, tmp_path) -> None:
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "archive.db").write_bytes(b"an older backup")
    result = CliRunner().invoke(main, ["archive", "backup", str(tmp_path / "copy")], env=env_for(memory_province))
    assert result.exit_code == EXIT_CONFIG
    assert "is not an empty folder" in result.output
    assert (tmp_path / "copy" / "archive.db").read_bytes() == b"an older backup"


@pytest.mark.postgres
def test_a_postgresql_archive_leaves_the_database_to_pg_dump(pg_database, tmp_path, keys_template) -> None:
    from bus.transport import MemoryTransport
    from tests.conftest import _make

    p = _make(tmp_path, MemoryTransport(), "mem", keys_template, db_url=pg_database)
    try:
        result = backup_archive(p.settings, tmp_path / "copy")
    finally:
        p.archive.close()
    assert not result.database_copied and not (tmp_path / "copy" / "archive.db").exists()
    assert result.archive_url.startswith("postgresql://")


def restore(p, folder, *extra: str):
    return CliRunner().invoke(main, ["archive", "restore", str(folder), "--yes", *extra], env=env_for(p))


def test_restore_puts_the_backup_in_place_keeps_the_newer_archive_aside_and_verifies(small_inline, tmp_path) -> None:
    p = small_inline
    digest = send_documents(p, tmp_path)
    backup = tmp_path / "sao-luu"
    assert CliRunner().invoke(main, ["archive", "backup", str(backup)], env=env_for(p)).exit_code == 0
    at_backup = Message.select().count()
    router = router_of(p)
    router.process_batch(submissions([signed_edoc(p.settings, DEPT, [PC], number="after")]))
    assert Message.select().count() == at_backup + 1
    ChunkStore(p.settings.home / "blobs").file(digest).unlink()  # the large file lost with the disk

    result = restore(p, backup, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["messages"], report["verified_entries"]) == (True, at_backup, report["chain_entries"])
    assert report["chain_head"] == report["expected_head"] and report["files_copied"] == 1
    assert Message.select().count() == at_backup  # the restored archive is the one in use
    aside = Path(report["replaced_into"])
    with sqlite3.connect(aside / "archive.db") as kept:  # nothing deleted: the newer one kept aside
        assert kept.execute("SELECT count(*) FROM message").fetchone()[0] == at_backup + 1
    assert ChunkStore(p.settings.home / "blobs").has(digest)


def test_restore_replaces_a_damaged_archive(memory_province, tmp_path) -> None:
    p = memory_province
    assert CliRunner().invoke(main, ["archive", "backup", str(tmp_path / "b")], env=env_for(p)).exit_code == 0
    p.archive.close()
    home_db = p.settings.home / "archive.db"
    for f in p.settings.home.glob("archive.db-*"):
        f.unlink()
    home_db.write_bytes(b"not a database any more")
    assert CliRunner().invoke(main, ["agency", "list"], env=env_for(p)).exit_code == EXIT_CONFIG
    result = restore(p, tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "archive intact" in result.output and "the archive that was there: " in result.output
    listed = CliRunner().invoke(main, ["agency", "list", "--json"], env=env_for(p))
    assert {a["organ_id"] for a in json.loads(listed.output)} == {PC, DEPT, "000.00.02.H61"}


def test_restore_refuses_what_is_not_a_backup_and_a_chain_that_ends_elsewhere(memory_province, tmp_path) -> None:
    p = memory_province
    (tmp_path / "empty").mkdir()
    refused = restore(p, tmp_path / "empty")
    assert refused.exit_code == EXIT_CONFIG and "no archive.db in" in refused.output
    router_of(p).process_batch(submissions([signed_edoc(p.settings, DEPT, [PC])]))  # a chain to end somewhere
    backup = tmp_path / "b"
    assert CliRunner().invoke(main, ["archive", "backup", str(backup)], env=env_for(p)).exit_code == 0
    manifest = json.loads((backup / "backup.json").read_text(encoding="utf-8"))
    assert len(manifest["chain_head"]) == 64
    (backup / "backup.json").write_text(json.dumps(manifest | {"chain_head": "f" * 64}), encoding="utf-8")
    mismatch = restore(p, backup)
    assert mismatch.exit_code == EXIT_FAILED and f"is not the one backup.json names ({'f' * 64})" in mismatch.output
    (backup / "backup.json").write_text("{ half written", encoding="utf-8")
    unreadable = restore(p, backup)
    assert unreadable.exit_code == EXIT_CONFIG and "backup.json is not the JSON" in unreadable.output
    (backup / "backup.json").write_text(json.dumps(manifest | {"chain_head": "f" * 64}), encoding="utf-8")
    kept = restore(p, backup, "--head", manifest["chain_head"])  # the head as the backup's journal kept it
    assert kept.exit_code == 0, kept.output
    other = restore(p, backup, "--head", "e" * 64)
    assert other.exit_code == EXIT_FAILED and f"is not the one given ({'e' * 64})" in other.output


def test_a_damaged_archive_is_not_backed_up(memory_province, tmp_path) -> None:
    p = memory_province
    p.archive.close()
    for f in p.settings.home.glob("archive.db-*"):
        f.unlink()
    (p.settings.home / "archive.db").write_bytes(b"not a database any more" * 100)
    result = CliRunner().invoke(main, ["archive", "backup", str(tmp_path / "b")], env=env_for(p))
    assert result.exit_code == EXIT_CONFIG
    assert "cannot read the archive database" in result.output and "file is not a database" in result.output
    assert not (tmp_path / "b" / "archive.db").exists()
