"""The drop folder: how an agency's document system takes in what its adapter received,
without an edXML parser of its own (``docbus adapter run --drop FOLDER``).

For each message handed over, in this order:

- ``<key>-<file name>``: each attachment, decoded (a small one from the envelope, a large one
  copied from the adapter's store, whose digest was checked when its chunks arrived);
- ``<key>.json``: the verified header as plain data (what ``docbus inspect --json`` prints,
  with ``"signature": "verified"``), each attachment's entry naming the file it was written to;
- ``<key>.edxml``: the signed envelope exactly as received, the legal record.

When the data centre's receipt for a document this agency sent arrives (:mod:`bus.receipt`,
its seal checked), ``<key>.receipt.json`` says so: ``{"kind": "receipt", "document_id",
"digest", "relayed_at", "relayed_at_utc"}``, ``digest`` the one the pickup folder's
``result.json`` gave for the document, ``relayed_at`` the relay time in Vietnam (edXML's
``yyyy/MM/dd HH:mm:ss``).

``key`` is the first 16 hex digits of the SHA-256 of the envelope as its sender submitted it
(the bus's message id; the copy written also carries the data centre's TraceHeader), so a
message handed over twice (after a crash) lands on the same names.  Every file is written
under a ``.part`` name and then renamed, and the envelope comes last: a system that watches
for ``*.edxml`` never sees a message whose files are still being written.

Security: attachment names come from the sender; :func:`bus.filenames.safe_name` keeps one
harmless name of each, and the key prefix keeps it apart from other messages' files.  An
attachment named ``*.edxml`` (the signed original a sao lục carries, or a sender's choice) is
written as ``*.edxml.xml``: only a message's own envelope, written last, ends in ``.edxml``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from bus import edxml
from bus.filenames import attachment_files

KEY_LENGTH = 16


def write(folder: Path, digest: str, msg: edxml.Message, raw: bytes) -> Path:
    """Write ``msg`` (verified; ``raw`` its envelope, ``digest`` the envelope's SHA-256) into
    ``folder``; returns the envelope's path, written last."""
    folder.mkdir(parents=True, exist_ok=True)
    key = digest[:KEY_LENGTH]
    header = edxml.summary(msg)
    # only verified messages are handed over; the tree read after verification has no Signature
    # element left, so the summary would say "absent"
    header["signature"] = "verified"
    attachments = getattr(msg, "attachments", [])
    names = attachment_files((_not_an_envelope(a.name) for a in attachments), prefix=f"{key}-")
    for att, entry, name in zip(attachments, header["attachments"], names, strict=True):
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


def write_receipt(folder: Path, document_id: str, digest: str, relayed_at_utc: dt.datetime) -> Path:
    """Tell the agency's system the data centre relayed the document it sent as ``digest``
    (``relayed_at_utc`` naive UTC, as the store keeps it)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest[:KEY_LENGTH]}.receipt.json"
    body = {
        "kind": "receipt",
        "document_id": document_id,
        "digest": digest,
        "relayed_at": edxml.fmt_timestamp(relayed_at_utc.replace(tzinfo=dt.UTC)),
        "relayed_at_utc": f"{relayed_at_utc:%Y-%m-%d %H:%M:%S}",
    }
    text = json.dumps(body, ensure_ascii=False, indent=2) + "\n"
    _replace_with(target, lambda part: part.write_text(text, encoding="utf-8"))
    return target


def _not_an_envelope(name: str) -> str:
    """An attachment's name that a system watching for ``*.edxml`` will not take for a message."""
    return f"{name}.xml" if name.lower().rstrip(". ").endswith(".edxml") else name


def _replace_with(target: Path, write_part: Any) -> None:
    part = target.with_name(target.name + ".part")
    write_part(part)
    part.replace(target)
