"""``docbus archive verify``: prove that nothing in the archive was altered.

Walks the hash chain in order and, for every entry: recomputes the entry hash from the
row as it is now (any edit to indexed metadata shows), rebuilds the stored bytes and checks
their digest (any edit to a blob shows), and re-verifies the signature of every accepted
message with the certificates as they were when it arrived; large files kept beside the
archive (``bus.blobs``) are re-hashed against the digest their signed envelope names.  It
names the first entry that fails and why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from bus.archive import AttachmentRecord, ChainEntry, Message, assemble, entry_hash, sha256
from bus.blobs import ChunkStore, file_sha256
from bus.envelope import Trust, open_envelope
from bus.errors import NotFound, Refused


@dataclass
class Finding:
    seq: int
    message_id: int
    document_id: str
    problem: str


@dataclass
class AuditResult:
    entries: int
    signatures: int
    first_problem: Finding | None

    @property
    def ok(self) -> bool:
        return self.first_problem is None


def verify_archive(
    trust: Trust,
    *,
    signatures: bool = True,
    progress: Callable[[int], None] | None = None,
    files: ChunkStore | None = None,
) -> AuditResult:
    """``files``: where the router keeps large files (``$DOCBUS_HOME/blobs``); None skips them."""
    prev = "0" * 64
    checked = signed = 0
    query = ChainEntry.select(ChainEntry, Message).join(Message).order_by(ChainEntry.seq)
    for entry in query.iterator():
        m: Message = entry.message
        checked += 1
        if progress is not None:
            progress(1)

        def bad(
            problem: str, entry: ChainEntry = entry, m: Message = m, counts: tuple[int, int] = (checked, signed)
        ) -> AuditResult:
            return AuditResult(counts[0], counts[1], Finding(entry.seq, m.id, m.document_id, problem))

        if entry.prev_hash != prev:
            return bad("the chain is broken here: an entry before it was removed or reordered")
        if entry_hash(prev, m) != entry.entry_hash:
            return bad("the archived row was altered (its metadata no longer matches the chain)")
        prev = entry.entry_hash
        if m.pruned_at is not None:
            continue  # pruned by policy: its bytes are gone on purpose, its row still on the chain
        try:
            data = assemble(m)
        except NotFound as exc:
            return bad(f"stored bytes are missing: {exc.message}")
        if m.size == len(data) and sha256(data) != m.digest:
            return bad("the stored bytes were altered (digest mismatch)")
        if m.size != len(data) and m.reason != "too-large":
            return bad("the stored bytes were truncated")
        if files is not None and m.state == "accepted":
            problem = _large_files_problem(m, files)
            if problem:
                return bad(problem)
        if signatures and m.state == "accepted":
            received = m.received_at.replace(tzinfo=dt.UTC)
            try:
                open_envelope(data, trust, at=received)
            except Refused as exc:
                return bad(f"the signature no longer verifies: [{exc.reason}] {exc.message}")
            signed += 1
    return AuditResult(checked, signed, None)


def _large_files_problem(m: Message, files: ChunkStore) -> str:
    """What is wrong with the large files ``m`` names, or ''."""
    rows = AttachmentRecord.select().where(
        (AttachmentRecord.message == m) & AttachmentRecord.payload.startswith("file:")
    )
    for r in rows:
        path = files.file(r.sha256)
        if not path.is_file():
            return f"the large file {r.name!r} (sha256:{r.sha256[:16]}...) is missing"
        if file_sha256(path)[0] != r.sha256:
            return f"the large file {r.name!r} was altered (its digest is not the signed one)"
    return ""
