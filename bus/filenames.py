"""File names that come from a sender, made safe to write on this machine.

An attachment's name is whatever the sending agency's system put in the envelope: a path
(``../../etc/cron.d/x``), a Windows path, control characters, a name longer than the file
system allows.  Everything that writes an attachment to disk (``docbus inbox save``, the drop
folder, ``docbus archive export``) names it through :func:`safe_name`, and two attachments of
one document with the same name through :func:`unique_name`; :func:`attachment_files` gives
a whole message's names at once, so ``docbus verify`` finds a large file where they put it.
None of them replaces a different file already in the folder (:func:`beside`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

MAX_NAME_BYTES = 200  # UTF-8; with a 16-digit key and ".part", inside a Linux file name's 255 bytes
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_name(name: str) -> str:
    """``name`` as one harmless file name: its last component, no control characters or
    separators, at most :data:`MAX_NAME_BYTES` bytes of UTF-8 (a Vietnamese letter takes two or
    three; a short extension is kept)."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if base in ("", ".", ".."):
        base = "file"
    if len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        keep = "." + ext if dot and stem and len(ext.encode()) <= 10 else ""
        room = MAX_NAME_BYTES - len(keep.encode())
        base = (stem if keep else base).encode()[:room].decode("utf-8", "ignore").rstrip() + keep
    return base


def unique_name(name: str, used: set[str]) -> str:
    """Two attachments of one message with the same name: the second gets ``-2``, …"""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        stem, dot, ext = name.rpartition(".")
        candidate = f"{stem}-{n}.{ext}" if dot and stem else f"{name}-{n}"
    used.add(candidate)
    return candidate


def attachment_files(names: Iterable[str], prefix: str = "") -> list[str]:
    """The file names a message's attachments are written under, in their order: each made
    safe, after ``prefix`` (the drop folder's key and a dash), a repeated name numbered."""
    used: set[str] = set()
    return [unique_name(f"{prefix}{safe_name(name)}", used) for name in names]


def beside(folder: Path, name: str, sha256: str) -> tuple[Path, bool]:
    """Where a file ``name`` whose content has digest ``sha256`` goes in ``folder`` without
    replacing another file: ``(path, True)`` when that very file is already there (saved
    before), else the first free one of ``name``, ``name-2``, …

    Why: a clerk saves every document's files into one folder, and many documents call their
    scan "scan.pdf"; writing over the last one would lose it without a word."""
    from bus.blobs import file_sha256  # bus.blobs names the files it writes through this module

    used: set[str] = set()
    while True:
        path = folder / unique_name(name, used)
        if not path.exists() and not path.is_symlink():
            return path, False
        if path.is_file() and not path.is_symlink() and file_sha256(path)[0] == sha256:
            return path, True
