"""The pickup folder: how an agency's document system sends without Python or edXML of its
own (``docbus adapter run --pickup FOLDER``).  The drop folder (:mod:`adapters.drop`) is
the other direction.

The system puts a document's files into FOLDER, then its header as ``<name>.send.json``,
last (write it under another name and rename it, so a half-written header is never read)::

    {"to": ["000.00.00.H61"], "subject": "Công văn V/v kết nối", "number": "125",
     "notation": "SNV-VP", "type": "Công văn", "files": ["scan.pdf"]}

Optional: ``"priority"`` (0 thường … 4), ``"content"``, ``"paper_only"``, ``"zip"``.  The
adapter sends it as ``docbus send`` would (signed, outbox first, queued while the broker is
down) and moves the header and its files out of the way, with ``result.json`` beside them.
Sao lục, as ``docbus distribute``: ``{"copy_of": "<DocumentId received>", "to": […],
"number": "12", "notation": "SL-UBND"}``, with ``"subject"``, ``"priority"`` and ``"files"``
(a cover letter) optional, sends a document the agency received on under its own number;
``"copy_of_file": "van-ban.edxml"`` instead of ``"copy_of"`` sends on a document that came
outside the bus (the national document axis), from its edXML file in the folder, flagged as
unverified (``docbus distribute --original``):

- ``FOLDER/sent/<name>/``: ``{"document_id", "digest", "published", "error"}`` (``published``
  false: the broker was away, the document waits in the outbox and the running adapter sends
  it); the data centre's receipt (``<key>.receipt.json``: relayed, and when), the 01 and later
  statuses arrive like any other message (the drop folder, ``docbus inbox``);
- ``FOLDER/refused/<name>/``: ``{"reason", "message"}``: a header that is not valid, a file
  missing or empty, a số already used today, a secret document, … Nothing is dropped.

A status about a received document (03 accepted, 04 assigned, 05 processing, 06 done, …) is
``<name>.status.json``: ``{"document_id": "…", "code": "03", "description": "…"}`` (the
description is optional); it goes to the document's sender, into ``sent/`` or ``refused/`` the
same way (``result.json``: ``{"document_id", "status_code", "to", "digest", "published",
"error"}``).

A header is moved to ``FOLDER/.sending/`` before its message is signed: after a crash, a
header found there was sent if its message is in the outbox (a document by its số, a status by
its document and code), and is sent otherwise, never twice.  Each header's files are its own
(they are moved with it).  A file is found by the name the header gives it however its
Vietnamese letters are composed (a Mac writes "Báo cáo.pdf" with combining marks).

Security: the header and the files come from the agency's own system, not from the bus; still,
a file is named by a plain name inside FOLDER (no path), symbolic links are refused (on a
folder shared with the agency's staff one would send any file the adapter may read), and a
header is read only up to :data:`MAX_HEADER_BYTES`.  Whoever may write FOLDER may send in the
agency's name: give it the permissions of the agency's outgoing mail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus.edxml import LONE_SURROGATE, STATUS_CODES, nfc, not_utf8
from bus.errors import DocbusError, NotFound, Refused
from bus.filenames import safe_name, unique_name
from bus.policy import named_twice

if TYPE_CHECKING:
    from adapters.adapter import Adapter

log = logging.getLogger("docbus.pickup")

SUFFIX = ".send.json"
STATUS_SUFFIX = ".status.json"
HEADERS = (f"*{SUFFIX}", f"*{STATUS_SUFFIX}")
MAX_HEADER_BYTES = 1 << 20
RESULT = "result.json"
_OPTIONAL = {"type": "Công văn", "priority": 0, "content": "", "paper_only": False, "zip": False}
_REQUIRED = ("to", "subject", "number", "notation", "files")
# a copy (sao lục) takes its type, content and files from the document it copies
_COPY_OPTIONAL: dict[str, Any] = {"subject": "", "priority": None, "files": []}
_COPY_REQUIRED = ("to", "number", "notation")
# what a copy copies: a document received on the bus, or the edXML file of one from outside it
_COPY_SOURCES = ("copy_of", "copy_of_file")


class BadJob(Refused):
    """A header the adapter cannot send as it stands; kept in ``refused/`` with this reason."""

    reason = "bad-job"


@dataclass(frozen=True)
class Job:
    """A header read and checked: what ``Adapter.send`` is called with."""

    name: str
    to: tuple[str, ...]
    subject: str
    number: str
    notation: str
    type_name: str
    priority: int | None  # None: a copy keeps the original's
    content: str
    paper_only: bool
    zipped: bool
    files: tuple[Path, ...]
    copy_of: str = ""  # sao lục: the received document sent on (Adapter.send_copy)
    original: Path | None = None  # ... or an outside document's edXML file (Adapter.send_outside_copy)

    @property
    def kept(self) -> tuple[Path, ...]:
        """The files that move with the header into sent/ or refused/."""
        return self.files + ((self.original,) if self.original is not None else ())


@dataclass(frozen=True)
class StatusJob:
    """A status header read and checked."""

    name: str
    document_id: str
    code: str
    description: str


@dataclass(frozen=True)
class Outcome:
    """What became of one header: ``state`` sent or refused, and the folder now holding it."""

    name: str
    state: str
    folder: Path
    document_id: str | None = None
    reason: str | None = None
    message: str | None = None
    status_code: str | None = None  # a status header's code


class Pickup:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sending = folder / ".sending"
        for d in (folder, self.sending, folder / "sent", folder / "refused"):
            d.mkdir(parents=True, exist_ok=True)

    def work(self, adapter: Adapter) -> list[Outcome]:
        """Send what the system left (headers a crash left in flight first); one outcome each.

        A file error of the folder itself (its permissions, a full disk) stops the adapter:
        ``local-io``, as the drop folder does, rather than be retried without end."""
        try:
            done = [self._recover(h, adapter) for h in _in_order(self.sending, HEADERS)]
            return done + [self._take(h, adapter) for h in _in_order(self.folder, HEADERS)]
        except OSError as exc:
            raise DocbusError(f"pickup folder {self.folder}: {exc}", reason="local-io") from exc

    def _take(self, header: Path, adapter: Adapter) -> Outcome:
        if header.name.endswith(STATUS_SUFFIX):
            return self._answer(header, adapter, in_flight=False)
        try:
            job = read_job(header)
            earlier = adapter.number_in_use(job.number, job.notation)
            if earlier is not None:
                raise earlier.refusal()
        except Refused as exc:
            return self._refuse(header, exc)
        in_flight = self.sending / header.name
        header.replace(in_flight)
        return self._send(in_flight, job, adapter)

    def _recover(self, header: Path, adapter: Adapter) -> Outcome:
        """A header a crash left between taken and moved: sent if its số is in the outbox."""
        if header.name.endswith(STATUS_SUFFIX):
            return self._answer(header, adapter, in_flight=True)
        try:
            # its files may be moved already (the crash came while finishing): not checked yet
            job = read_job(header, files_in=self.folder, check_files=False)
            earlier = adapter.number_in_use(job.number, job.notation)
            if earlier is None:
                job = read_job(header, files_in=self.folder)
        except Refused as exc:
            return self._refuse(header, exc)
        if earlier is None:
            return self._send(header, job, adapter)
        result = {"document_id": earlier.document_id, "digest": earlier.digest, "published": earlier.published}
        return self._finish(header, job, result)

    def _send(self, header: Path, job: Job, adapter: Adapter) -> Outcome:
        what: dict[str, Any] = dict(subject=job.subject, number=job.number, notation=job.notation, files=job.files)
        try:
            if job.copy_of:  # sao lục: type, content and the original's files come from the original
                sent = adapter.send_copy(job.copy_of, list(job.to), priority=job.priority, **what)
            elif job.original is not None:  # ... of a document from outside the bus, unverified
                sent = adapter.send_outside_copy(job.original, list(job.to), priority=job.priority, **what)
            else:
                sent = adapter.send(
                    list(job.to),
                    type_name=job.type_name,
                    priority=job.priority or 0,
                    content=job.content,
                    paper_only=job.paper_only,
                    zipped=job.zipped,
                    **what,
                )
        except (Refused, NotFound) as exc:
            return self._refuse(header, exc, job)
        result = {"document_id": sent.document_id, "digest": sent.digest, "published": sent.published}
        return self._finish(header, job, result | {"error": sent.error})

    def _answer(self, header: Path, adapter: Adapter, *, in_flight: bool) -> Outcome:
        """A status header: to the sender of the document it answers (a recall request, 13,
        to the recipients of the agency's own document)."""
        try:
            job = read_status_job(header)
            to = adapter.organ_id if job.code == "13" else adapter.document(job.document_id).sender.organ_id
        except (Refused, NotFound) as exc:
            return self._refuse(header, exc)
        earlier = adapter.answered(job.document_id, job.code) if in_flight else None
        if not in_flight:
            header.replace(self.sending / header.name)
            header = self.sending / header.name
        if earlier is None:
            try:
                earlier = adapter.send_status(job.document_id, to, job.code, job.description)
            except (Refused, NotFound) as exc:
                return self._refuse(header, exc)
        result: dict[str, Any] = {"document_id": job.document_id, "status_code": job.code, "to": to}
        result |= {"digest": earlier.digest, "published": earlier.published, "error": earlier.error}
        dest = self._move(header, (), "sent", result)
        log.info("sent %s: status %s for %s", job.name, job.code, job.document_id)
        return Outcome(job.name, "sent", dest, document_id=job.document_id, status_code=job.code)

    def _finish(self, header: Path, job: Job, result: dict[str, Any]) -> Outcome:
        dest = self._move(header, job.kept, "sent", result)
        log.info("sent %s: %s", job.name, result["document_id"])
        return Outcome(job.name, "sent", dest, document_id=result["document_id"])

    def _refuse(self, header: Path, exc: DocbusError, job: Job | None = None) -> Outcome:
        files = job.kept if job is not None else _named_files(header, self.folder)
        dest = self._move(header, files, "refused", {"reason": exc.reason, "message": exc.message})
        log.info("refused %s: %s (%s)", header.name, exc.reason, exc.message)
        return Outcome(_job_name(header), "refused", dest, reason=exc.reason, message=exc.message)

    def _move(self, header: Path, files: Sequence[Path], where: str, result: dict[str, Any]) -> Path:
        """Into ``where/<name>/``: the result first, the files, the header last."""
        parent = self.folder / where
        taken = {p.name for p in parent.iterdir()}
        dest = parent / unique_name(_job_name(header), taken)
        dest.mkdir()
        text = json.dumps(result, ensure_ascii=False, indent=2) + "\n"
        (dest / RESULT).write_text(text, encoding="utf-8")
        for f in files:
            if f.is_file():
                f.replace(dest / f.name)
        header.replace(dest / header.name)
        return dest


def read_job(header: Path, *, files_in: Path | None = None, check_files: bool = True) -> Job:
    """The header at ``header`` checked as ``docbus send`` checks its options (files are looked
    for in ``files_in``, by default the header's folder); :class:`BadJob` says what is wrong.
    ``check_files=False``: the files named are not looked at, only those present are listed."""
    folder = files_in or header.parent
    data = _header(header)
    sources = [k for k in _COPY_SOURCES if k in data]
    copy = bool(sources)
    required, optional = (_COPY_REQUIRED, _COPY_OPTIONAL) if copy else (_REQUIRED, _OPTIONAL)
    unknown = sorted(set(data) - set(required) - set(optional) - set(sources))
    missing = [k for k in required if k not in data]
    if unknown or missing:
        in_copy = f" in a copy ({sources[0]})" if copy else ""
        what = [f"unknown field(s) {', '.join(unknown)}{in_copy}"] if unknown else []
        what += [f"missing {', '.join(missing)}"] if missing else []
        raise BadJob("; ".join(what))
    if len(sources) > 1:
        raise BadJob('a copy names "copy_of" (a document received on the bus) or "copy_of_file", not both')
    fields = _OPTIONAL | optional | data
    to = fields["to"].split(",") if isinstance(fields["to"], str) else fields["to"]
    if not isinstance(to, list) or not all(isinstance(c, str) for c in to):
        raise BadJob('"to" is a list of OrganIds')
    to = [c.strip() for c in to if c.strip()]
    if not to:
        raise BadJob('"to" names no recipient')
    twice = named_twice(to)
    if twice:
        raise BadJob(f"recipient {twice} is named more than once")
    may_be_empty = ("notation", "content") + (("subject",) if copy else ())
    texts = ("subject", "number", "notation", "type", "content")
    subject, number, notation, type_name, content = (_text(fields, k, blank=k in may_be_empty) for k in texts)
    copy_of = _text(fields, "copy_of", blank=False) if "copy_of" in sources else ""
    original = None
    if "copy_of_file" in sources:
        name = _text(fields, "copy_of_file", blank=False)
        found = _files([name], folder) if check_files else _present([name], folder)
        original = found[0] if found else None
    priority = fields["priority"]
    if not (copy and priority is None) and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 4
    ):
        raise BadJob('"priority" is a whole number from 0 (thường) to 4 (hỏa tốc hẹn giờ)')
    paper_only, zipped = fields["paper_only"], fields["zip"]
    if not isinstance(paper_only, bool) or not isinstance(zipped, bool):
        raise BadJob('"paper_only" and "zip" are true or false')
    return Job(
        _job_name(header),
        tuple(to),
        subject,
        number,
        notation,
        type_name,
        priority,
        content,
        paper_only,
        zipped,
        _files(fields["files"], folder) if check_files else _present(fields["files"], folder),
        copy_of,
        original,
    )


def read_status_job(header: Path) -> StatusJob:
    """A status header checked: a DocumentId, a QCVN status code, an optional description."""
    data = _header(header)
    unknown = sorted(set(data) - {"document_id", "code", "description"})
    missing = [k for k in ("document_id", "code") if k not in data]
    if unknown or missing:
        what = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        what += [f"missing {', '.join(missing)}"] if missing else []
        raise BadJob("; ".join(what))
    fields = {"description": ""} | data
    document_id, code = _text(fields, "document_id", blank=False), _text(fields, "code", blank=False)
    if code not in STATUS_CODES:
        raise BadJob(f'"code" {code!r} is not a QCVN status code ({", ".join(sorted(STATUS_CODES))})')
    return StatusJob(_job_name(header), document_id, code, _text(fields, "description", blank=True))


def _header(header: Path) -> dict[str, Any]:
    """A header file as a JSON object, bounded and UTF-8, not a link."""
    if header.is_symlink():
        raise BadJob("the header is a symbolic link: write the header itself in the pickup folder")
    if header.stat().st_size > MAX_HEADER_BYTES:
        raise BadJob(f"the header is over {MAX_HEADER_BYTES} bytes")
    try:
        data = json.loads(header.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise BadJob("the header is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise BadJob(f"the header is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadJob("the header is not a JSON object")
    lone = next((found for text in _texts(data) if (found := LONE_SURROGATE.search(text))), None)
    if lone is not None:  # an escape such as "\udcff" that JSON allows and no text can hold
        raise BadJob(f"the header holds U+{ord(lone.group()):04X}, half of a UTF-16 pair: not a character of any text")
    return data


def _texts(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


def _text(fields: dict[str, Any], key: str, *, blank: bool) -> str:
    value = fields[key]
    if isinstance(value, int) and not isinstance(value, bool) and key == "number":
        value = str(value)
    if not isinstance(value, str):
        raise BadJob(f'"{key}" is text')
    if not blank and not value.strip():
        raise BadJob(f'"{key}" may not be empty')
    return value.strip()


def _files(names: Any, folder: Path) -> tuple[Path, ...]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadJob('"files" is a list of file names in the pickup folder')
    out = []
    for name in names:
        if not _plain(name):
            raise BadJob(f"{name!r} is not a plain file name in the pickup folder")
        path = _in_folder(folder, name)
        if path.is_symlink():  # a shared folder: a link would send whatever the adapter may read
            raise BadJob(f"{name} is a symbolic link: put the file itself in the pickup folder")
        if not path.is_file():
            raise Refused(f"{name} is not in the pickup folder", reason="missing-file")
        if path.stat().st_size == 0:
            raise Refused(f"{name} is empty (0 bytes): attach the document's electronic file", reason="empty-file")
        out.append(path)
    if len(set(out)) < len(out):
        raise BadJob("a file is named more than once")
    return tuple(out)


def _present(names: Any, folder: Path) -> tuple[Path, ...]:
    if not isinstance(names, list):
        return ()
    found = (_in_folder(folder, n) for n in names if isinstance(n, str) and _plain(n))
    return tuple(path for path in found if path.is_file())


def _in_folder(folder: Path, name: str) -> Path:
    """The file ``name`` names in ``folder``, its Vietnamese letters composed either way.

    Why: a header typed on Windows says "Tờ trình.pdf" precomposed (NFC) while the same name
    written by a Mac onto a shared folder arrives with combining marks (NFD), and Linux
    compares file names byte for byte.  An exact match wins; otherwise the one entry whose
    name is the same text (``edxml.nfc``); otherwise ``folder / name`` (not there)."""
    path = folder / name
    if path.exists() or path.is_symlink() or not folder.is_dir():
        return path
    wanted = nfc(name)
    same = [entry for entry in folder.iterdir() if entry.name != name and nfc(entry.name) == wanted]
    return same[0] if len(same) == 1 else path


def _named_files(header: Path, folder: Path) -> list[Path]:
    """The plain names a header that could not be used lists, to keep them with it."""
    try:
        if header.stat().st_size > MAX_HEADER_BYTES:
            return []
        data = json.loads(header.read_bytes().decode("utf-8-sig"))
        names = data.get("files", [])
        original = data.get("copy_of_file")
    except (OSError, ValueError, AttributeError):
        return []
    return list(_present([*names, original] if isinstance(names, list) and original else names, folder))


def _plain(name: str) -> bool:
    """A file name of the folder's own: no path, not hidden, not another header."""
    return (
        not not_utf8(name)
        and name == safe_name(name)
        and not name.startswith(".")
        and not name.endswith((SUFFIX, STATUS_SUFFIX))
    )


def _in_order(folder: Path, patterns: Iterable[str]) -> list[Path]:
    """The headers in the order the system left them (then by name): its numbers, and a
    document's statuses, usually follow that order."""
    found = [(h.stat().st_mtime_ns, h.name, h) for p in patterns for h in folder.glob(p) if h.is_file()]
    return [h for _, _, h in sorted(found)]


def _job_name(header: Path) -> str:
    for suffix in (SUFFIX, STATUS_SUFFIX):
        if header.name.endswith(suffix):
            return header.name[: -len(suffix)]
    return header.name
