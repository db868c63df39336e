"""The drop folder: how an agency's document system takes in what its adapter received,
without an edXML parser of its own (``docbus adapter run --drop FOLDER``).

For each message handed over, in this order:

- ``<key>-<file name>``: each attachment, decoded (a small one from the envelope, a large one
  copied from the adapter's store, whose digest was checked when its chunks arrived);
- ``<key>.json``: the verified header as plain data (what ``docbus inspect --json`` prints),
  each attachment's entry naming the file it was written to;
- ``<key>.edxml``: the signed envelope exactly as received, the legal record.

``key`` is the first 16 hex digits of the envelope's SHA-256, so a message handed over twice
(after a crash) lands on the same names.  Every file is written under a ``.part`` name and
then renamed, and the envelope comes last: a system that watches for ``*.edxml`` never sees
a message whose files are still being written.

Security: attachment names come from the sender.  Only the last path component is kept,
control characters and separators become ``_``, and the key prefix keeps every name inside
the folder and apart from other messages' files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from bus import edxml

KEY_LENGTH = 16
MAX_NAME_BYTES = 200  # UTF-8; with the key and ".part", inside the 255 bytes of a Linux file name
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def write(folder: Path, digest: str, msg: edxml.Message, raw: bytes) -> Path:
    """Write ``msg`` (verified; ``raw`` its envelope, ``digest`` the envelope's SHA-256) into
    ``folder``; returns the envelope's path, written last."""
    folder.mkdir(parents=True, exist_ok=True)
    key = digest[:KEY_LENGTH]
    header = edxml.summary(msg)
    used: set[str] = set()
    for att, entry in zip(getattr(msg, "attachments", []), header["attachments"], strict=True):
        name = unique_name(f"{key}-{safe_name(att.name)}", used)
        target = folder / name
        if att.path is not None:  # a large file: copied from the store, never read whole
            _replace_with(target, lambda part, src=att.path: shutil.copyfile(src, part))
        else:
            _replace_with(target, lambda part, data=att.data: part.write_bytes(data))
        entry["file"] = name
    text = json.dumps(header, ensure_ascii=False, indent=2) + "\n"
    _replace_with(folder / f"{key}.json", lambda part: part.write_text(text, encoding="utf-8"))
    envelope = folder / f"{key}.edxml"
    _replace_with(envelope, lambda part: part.write_bytes(raw))
    return envelope


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


def _replace_with(target: Path, write_part: Any) -> None:
    part = target.with_name(target.name + ".part")
    write_part(part)
    part.replace(target)
