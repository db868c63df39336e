"""Large files: content-addressed, travelling in chunks beside a small signed envelope.

An attachment larger than ``Limits.inline_attachment_bytes`` is not put inside the
envelope.  The envelope's ``Attachment`` names it instead, with an element in the docbus
namespace that the sender signs with everything else::

    <dbx:External xmlns:dbx="urn:docbus:external:1" sha256="..." size="..." chunkSize="1048576"/>

and the file travels as chunk messages of ``chunkSize`` bytes, published before the
envelope on the same path (sender -> router, router -> each recipient's inbox), so the
broker never carries a message of more than about a MiB and no process holds the file.

Security: chunks are untrusted bytes until assembled.  A file is used only once its
SHA-256 equals the one inside an envelope whose signature verified; chunks are staged per
claimed sender (the routing key, which the broker's permissions tie to the agency), so one
agency cannot fill in another's upload.  Sizes and counts are bounded before anything is
written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.errors import MalformedEnvelope, Refused
from bus.filenames import attachment_files

EXT_NS = "urn:docbus:external:1"
CHUNK_KIND = "chunk"
CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024 * 1024 * 1024
READ_BYTES = 1024 * 1024
STAGING_KEEP_SECONDS = 24 * 3600  # chunks whose envelope has not come by then are removed


class AttachmentIncomplete(Refused):
    """Not every chunk of a large file has arrived (yet)."""

    reason = "attachment-incomplete"


@dataclass(frozen=True)
class External:
    """A large file named by a signed envelope: its digest, size and how it is cut."""

    sha256: str
    size: int
    chunk_size: int = CHUNK_BYTES

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise MalformedEnvelope("External sha256 must be 64 lower-case hex digits", reason="bad-attachment")
        if not 0 < self.size <= MAX_FILE_BYTES:
            raise MalformedEnvelope(f"External size {self.size} is out of bounds", reason="bad-attachment")
        if not 0 < self.chunk_size <= MAX_CHUNK_BYTES:
            raise MalformedEnvelope(f"External chunkSize {self.chunk_size} is out of bounds", reason="bad-attachment")

    @property
    def count(self) -> int:
        return -(-self.size // self.chunk_size)

    def attributes(self) -> dict[str, str]:
        return {"sha256": self.sha256, "size": str(self.size), "chunkSize": str(self.chunk_size)}

    @classmethod
    def from_attributes(cls, attrs: Any) -> External:
        try:
            return cls(str(attrs.get("sha256", "")), int(attrs.get("size", "")), int(attrs.get("chunkSize", "")))
        except ValueError as exc:
            raise MalformedEnvelope("External size and chunkSize must be integers", reason="bad-attachment") from exc

    @classmethod
    def of_file(cls, path: Path, chunk_size: int = CHUNK_BYTES) -> External:
        """Describe ``path`` (read once, a MiB at a time)."""
        return cls(*file_sha256(path), chunk_size)


def file_sha256(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file of any size, read a MiB at a time."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def chunk_headers(ext: External, index: int) -> dict[str, Any]:
    return {
        "x-docbus-kind": CHUNK_KIND,
        "x-docbus-blob": ext.sha256,
        "x-docbus-index": index,
        "x-docbus-count": ext.count,
        "x-docbus-size": ext.size,
        "x-docbus-chunk-size": ext.chunk_size,
    }


def is_chunk(headers: dict[str, Any] | None) -> bool:
    return bool(headers) and headers.get("x-docbus-kind") == CHUNK_KIND  # type: ignore[union-attr]


def read_chunks(path: Path, ext: External) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of ``path`` cut as ``ext`` says, read lazily."""
    with path.open("rb") as fh:
        for index in range(ext.count):
            yield index, fh.read(ext.chunk_size)


class ChunkStore:
    """Chunks being received and the files assembled from them, under one directory.

    ``incoming/<owner>/<sha256>/<index>`` while chunks arrive; ``files/<sha256[:2]>/<sha256>``
    once assembled and checked.  Every write is to a temporary name, fsynced, then renamed,
    so a crash leaves either a whole chunk or none.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _staging(self, owner: str, sha: str) -> Path:
        safe = "".join(c for c in owner if c.isalnum() or c in ".-_") or "_"
        return self.root / "incoming" / safe / sha

    def file(self, sha: str) -> Path:
        return self.root / "files" / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.file(sha).is_file()

    def put(self, owner: str, headers: dict[str, Any], data: bytes) -> None:
        """Stage one chunk; raises :class:`MalformedEnvelope` for headers out of bounds."""
        try:
            ext = External(
                str(headers.get("x-docbus-blob", "")),
                int(headers.get("x-docbus-size", 0)),
                int(headers.get("x-docbus-chunk-size", 0)),
            )
            index = int(headers.get("x-docbus-index", -1))
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an infinite double
            raise MalformedEnvelope("chunk headers are not integers", reason="bad-chunk") from exc
        last = ext.size - (ext.count - 1) * ext.chunk_size
        expected = last if index == ext.count - 1 else ext.chunk_size
        if not 0 <= index < ext.count or len(data) != expected:
            raise MalformedEnvelope(
                f"chunk {index} of {ext.count} has {len(data)} bytes, expected {expected}", reason="bad-chunk"
            )
        if self.has(ext.sha256):
            return  # already assembled: a resend
        folder = self._staging(owner, ext.sha256)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / f"{index:07d}", data)

    def assemble(self, owner: str, ext: External) -> Path:
        """The file ``ext`` names, assembled from ``owner``'s chunks and checked against its digest.

        Raises :class:`AttachmentIncomplete` while chunks are missing and :class:`Refused`
        (``attachment-digest``) when the chunks do not make the signed digest.
        """
        target = self.file(ext.sha256)
        if target.is_file():
            return target
        folder = self._staging(owner, ext.sha256)
        missing = [i for i in range(ext.count) if not (folder / f"{i:07d}").is_file()]
        if missing:
            raise AttachmentIncomplete(
                f"{len(missing)} of {ext.count} chunks of file sha256:{ext.sha256[:16]}... have not arrived"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        h = hashlib.sha256()
        with tmp.open("wb") as out:
            for i in range(ext.count):
                with (folder / f"{i:07d}").open("rb") as part:
                    while block := part.read(READ_BYTES):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != ext.sha256 or tmp.stat().st_size != ext.size:
            tmp.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            raise Refused(
                f"the chunks of file sha256:{ext.sha256[:16]}... do not make the signed digest",
                reason="attachment-digest",
            )
        os.replace(tmp, target)
        shutil.rmtree(folder, ignore_errors=True)
        return target

    def sweep(self, older_than_seconds: float = STAGING_KEEP_SECONDS) -> int:
        """Remove staged chunks nothing has added to for ``older_than_seconds`` (their envelope
        never came, or was refused); returns how many uploads were removed."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for folder in self.root.glob("incoming/*/*"):
            newest = max((f.stat().st_mtime for f in folder.iterdir()), default=folder.stat().st_mtime)
            if newest < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def keep(self, data: bytes) -> tuple[External, Path]:
        """Keep bytes made on this machine under their digest (as :meth:`adopt` keeps a file)."""
        ext = External(hashlib.sha256(data).hexdigest(), len(data))
        target = self.file(ext.sha256)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(target, data)
        return ext, target

    def adopt(self, path: Path, ext: External) -> Path:
        """Keep a copy of a local file (the sender's spool) under its digest."""
        target = self.file(ext.sha256)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        return target


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FileMissing(Refused):
    """A large file a verified envelope names is nowhere this check can look."""

    reason = "attachment-missing"


def check_files_beside(envelope: Path, attachments: Sequence[Any], stores: Sequence[ChunkStore] = ()) -> list[Path]:
    """Check each large file a verified envelope names against the digest it signs; returns
    the files checked.

    ``docbus verify`` calls this for an envelope on disk: its signature covers only the
    reference (``External``), so an exported document (``docbus archive export``: the file as
    ``<name>``) or a received one (the drop folder: ``<key>-<name>`` beside ``<key>.edxml``)
    is whole only if the file beside it is the one signed.  Looked for there, then in
    ``stores`` (this machine's copies by digest: the data centre's, the agencies').  Raises
    :class:`Refused` (``attachment-digest``) for a file that is not the one signed and
    :class:`FileMissing` when none is found.
    """
    names = [a.name for a in attachments]
    plain, keyed = attachment_files(names), attachment_files(names, prefix=f"{envelope.stem}-")
    checked: list[Path] = []
    for att, *candidates in zip(attachments, plain, keyed, strict=True):
        ext = att.external
        if ext is None:
            continue  # inside the envelope: the signature covered its bytes
        paths = [envelope.parent / c for c in candidates] + [store.file(ext.sha256) for store in stores]
        found = next((p for p in paths if p.is_file()), None)
        if found is None:
            raise FileMissing(
                f"the large file {att.name!r} ({ext.size} bytes, sha256:{ext.sha256[:16]}…) the envelope signs is "
                f"not beside it (looked for {', '.join(repr(c) for c in dict.fromkeys(candidates))})"
            )
        sha, size = file_sha256(found)
        if (sha, size) != (ext.sha256, ext.size):
            raise Refused(
                f"{found.name!r} is not the file the envelope signs for {att.name!r} "
                f"(sha256:{sha[:16]}…, {size} bytes; signed: sha256:{ext.sha256[:16]}…, {ext.size} bytes)",
                reason="attachment-digest",
            )
        checked.append(found)
    return checked
