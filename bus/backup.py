"""``docbus archive backup``: a consistent copy of the archive while the routers keep running.

The archive is the province's only integrated record of what travelled, so the data centre
copies it somewhere else on a schedule.  Copying ``archive.db`` with ``cp`` while a router
writes can produce a file that is not a database (SQLite in WAL mode keeps recent commits
in ``archive.db-wal``); this module uses SQLite's online backup in one step instead, which
reads one snapshot, so the copy holds exactly the commits made before it started and routers
are not stopped (meanwhile SQLite cannot fold their new commits back into ``archive.db``, so
``archive.db-wal`` grows for as long as the copy takes and is reused after it).  The large
files kept beside the archive (``$DOCBUS_HOME/blobs/files``, content-addressed) are copied
too, each re-hashed on the way: a file whose bytes no longer match its name is reported,
not copied.

What it does not copy: the provincial CA's and the data centre's keys (docs/SECURITY.md says
where they are kept), agencies' local stores (each agency backs up its own), and a PostgreSQL
archive's database, which ``pg_dump`` copies (docs/DEPLOY.md, "Backups"); for PostgreSQL the
large files are still copied.

A backup folder holds ``archive.db``, ``files/`` and ``backup.json`` (when, what, and the
chain head: the hash of the newest archive entry, which ``docbus archive verify`` on a
restored copy must reach again).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bus import __version__
from bus.blobs import READ_BYTES
from bus.config import Settings, redact
from bus.errors import ConfigError, one_line

# (stage, done, total): the CLI draws a bar per stage ("archive" in bytes, "files" in bytes)
Progress = Callable[[str, int, int], None]
MANIFEST = "backup.json"
_STORED_NAME = re.compile(r"[0-9a-f]{64}")  # a large file is kept under its SHA-256


@dataclass
class BackupResult:
    folder: str
    created_at: str
    archive_url: str
    database_copied: bool  # False for PostgreSQL (pg_dump's job)
    database_bytes: int = 0
    messages: int = 0
    chain_entries: int = 0
    chain_head: str = ""
    files: int = 0
    file_bytes: int = 0
    altered_files: list[str] = field(default_factory=list)  # sha256 names whose bytes no longer match
    skipped: list[str] = field(default_factory=list)  # not a stored file (a crashed write's temporary)
    seconds: float = 0.0
    docbus_version: str = __version__

    @property
    def ok(self) -> bool:
        return not self.altered_files


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def backup_archive(settings: Settings, folder: Path, progress: Progress = _quiet) -> BackupResult:
    """Copy the archive and its large files into ``folder`` (new, or empty)."""
    started = time.monotonic()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} is not an empty folder: give each backup a folder of its own")
    url = settings.archive_url
    sqlite_path = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
    if sqlite_path is not None and not sqlite_path.is_file():
        raise ConfigError(f"no archive at {sqlite_path}: run 'docbus init' first")
    folder.mkdir(parents=True, exist_ok=True)
    result = BackupResult(
        folder=str(folder),
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        archive_url=redact(url),
        database_copied=sqlite_path is not None,
    )
    if sqlite_path is not None:
        _copy_sqlite(sqlite_path, folder / "archive.db", result, progress)
    _copy_files(settings.home / "blobs" / "files", folder / "files", result, progress)
    result.seconds = round(time.monotonic() - started, 2)
    (folder / MANIFEST).write_text(json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result


def _copy_sqlite(source: Path, target: Path, result: BackupResult, progress: Progress) -> None:
    """One ``sqlite3_backup_step(-1)``: a single read snapshot, whatever the routers commit meanwhile.

    (Copying in steps would let each step see later commits, and SQLite restarts a stepwise
    backup whenever another connection writes: under a steady stream it might never end.)
    The bar follows the copy's size from this thread while the backup runs in another."""
    partial = target.with_name(target.name + ".partial")
    try:
        with contextlib.closing(sqlite3.connect(source)) as probe:
            total = probe.execute("PRAGMA page_count").fetchone()[0] * probe.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.DatabaseError as exc:  # a damaged archive: its last backup is what restores it
        raise ConfigError(f"cannot read the archive database {source}: {one_line(exc)}") from exc
    failure: list[BaseException] = []

    def run() -> None:
        try:
            src = sqlite3.connect(source, timeout=30)
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst, pages=-1)
            finally:
                dst.close()
                src.close()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="archive-backup", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        progress("archive", min(partial.stat().st_size if partial.exists() else 0, total), total)
    if failure:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot copy the archive database {source}: {one_line(failure[0])}") from failure[0]
    with contextlib.closing(sqlite3.connect(partial)) as copy:
        check = copy.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise ConfigError(f"the copy of the archive in {partial} does not check out: {check}")
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        result.messages = copy.execute("SELECT count(*) FROM message").fetchone()[0]
        head = copy.execute("SELECT seq, entry_hash FROM chain_head").fetchone()
        if head is not None:
            result.chain_entries, result.chain_head = head
    with partial.open("rb+") as fh:
        os.fsync(fh.fileno())
    partial.rename(target)
    result.database_bytes = target.stat().st_size
    progress("archive", total, total)


def _copy_files(source: Path, target: Path, result: BackupResult, progress: Progress) -> None:
    """Copy each large file under its name, re-hashed on the way; an altered one is listed instead."""
    copied, _ = _copy_store(source, target, progress, result.altered_files, result.skipped)
    result.files, result.file_bytes = len(copied), sum(p.stat().st_size for p in copied)


def _copy_store(
    source: Path,
    target: Path,
    progress: Progress,
    altered: list[str],
    skipped: list[str] | None = None,
    *,
    missing_only: bool = False,
) -> tuple[list[Path], int]:
    """The large files kept under ``source`` (``<2 hex>/<sha256>``) copied into ``target`` by
    :func:`_copy_checked`; returns the copies made and how many ``target`` held already.  A
    file whose bytes no longer make its name goes into ``altered``, a name that is not a
    digest (a crashed write's temporary) into ``skipped``; ``missing_only``: a file ``target``
    holds already is left as it is."""
    found = sorted(p for p in source.glob("*/*") if p.is_file()) if source.is_dir() else []
    stored = [p for p in found if _STORED_NAME.fullmatch(p.name)]
    if skipped is not None:
        skipped.extend(str(p) for p in found if not _STORED_NAME.fullmatch(p.name))
    held = len(stored)
    if missing_only:
        stored = [p for p in stored if not (target / p.parent.name / p.name).is_file()]
    held -= len(stored)
    counter = _Counter("files", sum(p.stat().st_size for p in stored), progress)
    copied = []
    for path in stored:
        out = target / path.parent.name / path.name
        if _copy_checked(path, out, counter):
            copied.append(out)
        else:
            altered.append(path.name)
    progress("files", counter.total, counter.total)
    return copied, held


class _Counter:
    """Bytes copied so far in one stage, passed on to ``progress`` as they go."""

    def __init__(self, stage: str, total: int, progress: Progress) -> None:
        self.stage, self.total, self.progress, self.done = stage, total, progress, 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.progress(self.stage, self.done, self.total)


def _copy_checked(path: Path, out: Path, copied: Callable[[int], None]) -> bool:
    """Copy a stored large file to ``out`` (fsynced, under a temporary name until whole) if its
    bytes still make the digest it is named by; False, and nothing at ``out``, if they do not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.copy.tmp")
    h = hashlib.sha256()
    with path.open("rb") as src, partial.open("wb") as dst:
        while block := src.read(READ_BYTES):
            h.update(block)
            dst.write(block)
            copied(len(block))
        dst.flush()
        os.fsync(dst.fileno())
    if h.hexdigest() != path.name:
        partial.unlink()
        return False
    partial.rename(out)
    return True


@dataclass
class RestoreResult:
    folder: str
    backup_created_at: str  # from backup.json ('' if the folder has none)
    replaced_into: str  # where the archive that was there now is ('' if there was none)
    messages: int = 0
    chain_entries: int = 0
    chain_head: str = ""
    expected_head: str = ""  # backup.json's
    files_copied: int = 0
    files_present: int = 0
    altered_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.altered_files and (not self.expected_head or self.chain_head == self.expected_head)


def routers_running(settings: Settings) -> int | None:
    """Routers consuming this bus's queue now, from the management API; None if it cannot say."""
    from bus.brokeradmin import BrokerAdmin
    from bus.health import queue_states
    from bus.topology import Names

    names = Names(settings.namespace)
    admin = BrokerAdmin(settings.amqp_url, settings.mgmt_url or None)
    if not admin.available():
        return None
    state = queue_states(admin, settings.amqp_url, names).get(names.router_queue)
    return state.consumers if state is not None else 0


def restore_archive(
    settings: Settings, folder: Path, progress: Progress = _quiet, *, expected_head: str = ""
) -> RestoreResult:
    """Put the backup in ``folder`` in place of the SQLite archive; the routers must be stopped.

    Nothing is deleted: the archive that was there (``archive.db`` and its ``-wal`` and
    ``-shm``) is moved into ``$DOCBUS_HOME/archive-replaced-<UTC time>/`` first.  The backup's
    large files that are not in ``$DOCBUS_HOME/blobs/files`` are copied in, re-hashed; those
    already there are left as they are.  The caller checks the restored archive
    (``docbus archive verify``) before the routers start again.  ``expected_head``: the chain
    head as recorded outside the backup folder (the backup's journal line); by default the one
    in its ``backup.json``, which whoever can rewrite the folder can rewrite too."""
    url = settings.archive_url
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            f"the archive is {redact(url)}: restore a PostgreSQL database with pg_restore, then copy "
            f"{folder / 'files'} into {settings.home / 'blobs' / 'files'}"
        )
    source = folder / "archive.db"
    if not source.is_file():
        raise ConfigError(f"no archive.db in {folder}: not a folder 'docbus archive backup' wrote")
    manifest = folder / MANIFEST
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{manifest} is not the JSON 'docbus archive backup' writes: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"{manifest} is not the JSON 'docbus archive backup' writes")
    target = Path(url[len("sqlite:///") :])
    result = RestoreResult(
        folder=str(folder),
        backup_created_at=str(meta.get("created_at", "")),
        replaced_into="",
        expected_head=expected_head or str(meta.get("chain_head", "")),
    )
    present = [target.with_name(target.name + suffix) for suffix in ("", "-wal", "-shm")]
    if any(p.exists() for p in present):
        stamp = f"archive-replaced-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"
        aside, n = target.parent / stamp, 1
        while aside.exists():  # a second restore within the same second
            n += 1
            aside = target.parent / f"{stamp}-{n}"
        aside.mkdir(parents=True)
        for p in present:
            if p.exists():
                p.rename(aside / p.name)
        result.replaced_into = str(aside)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    counter = _Counter("archive", source.stat().st_size, progress)
    with source.open("rb") as src, partial.open("wb") as dst:
        while block := src.read(READ_BYTES):
            dst.write(block)
            counter(len(block))
        dst.flush()
        os.fsync(dst.fileno())
    partial.rename(target)
    with contextlib.closing(sqlite3.connect(target)) as db:
        result.messages = db.execute("SELECT count(*) FROM message").fetchone()[0]
        head = db.execute("SELECT seq, entry_hash FROM chain_head").fetchone()
        if head is not None:
            result.chain_entries, result.chain_head = head
    _restore_files(folder / "files", settings.home / "blobs" / "files", result, progress)
    return result


def _restore_files(source: Path, target: Path, result: RestoreResult, progress: Progress) -> None:
    """The backup's large files that the data centre lacks, each re-hashed on the way in."""
    copied, result.files_present = _copy_store(source, target, progress, result.altered_files, missing_only=True)
    result.files_copied = len(copied)
