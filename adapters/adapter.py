"""The agency adapter: what an agency's document system calls to use the bus.

Example (after ``docbus init`` and ``docbus agency add`` for both agencies)::

    from bus.config import from_env
    from adapters import Adapter

    with Adapter(from_env(), "000.00.01.H61") as sender:
        sent = sender.send(["000.00.00.H61"], subject="Công văn V/v kết nối", number="12",
                           notation="SNV-VP", files=["scan.pdf"])
    with Adapter(from_env(), "000.00.00.H61") as receiver:
        for item in receiver.receive(idle_timeout=2):   # verified, stored, status 01 sent
            print(item.document_id, item.subject)

A document's DocumentId is made of its sender, the day and its số/ký hiệu: ask
``number_in_use(number, notation)`` before sending a new one, as ``docbus send`` does, so
two documents never share one.

Guarantees, and how:

- sending: every message is signed and committed to the local outbox before it is
  published (confirmed, mandatory); what the broker did not confirm stays there and is
  retried with backoff by :meth:`run` (``docbus adapter run``), so a clerk can send while
  the broker is down;
- receiving: a delivery is verified, then stored together with its automatic status 01 in
  one transaction, and acked only after that commit; the same message delivered again
  (same message id) is acked and dropped;
- handing over: each stored document is handed to the agency's system (``on_receive``)
  once; an item whose hand-off did not finish (a crash) is handed again on the next start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import mimetypes
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from peewee import OperationalError

from adapters.store import open_store, utcnow
from bus import compose, edxml, receipt, safexml, schema, statements
from bus.archive import sha256
from bus.blobs import CHUNK_KIND, ChunkStore, External, chunk_headers, is_chunk, read_chunks
from bus.brokeradmin import agency_url
from bus.config import QCVN_ORGAN_ID, Settings
from bus.edxml import Attachment, Edoc, Organ
from bus.envelope import (
    HubTrace,
    Opened,
    check_hub_traces,
    open_envelope,
    peek_document_id,
    peek_kind,
    peek_status_code,
    read_unverified_edoc,
    sender_signature,
)
from bus.errors import (
    BrokerUnavailable,
    DocbusError,
    HandOffFailed,
    MalformedEnvelope,
    NotFound,
    PolicyRefusal,
    Refused,
    SchemaViolation,
)
from bus.filenames import attachment_files, beside
from bus.files import read_bounded, regular_file
from bus.policy import REVOKE, UPDATE, check_secrecy, related_document_ids
from bus.province import CRL_KIND
from bus.router import load_trust
from bus.topology import URGENT_PRIORITY, Names
from bus.transport import AmqpTransport, Delivery, DeliveryFailed, Outgoing, Transport
from signing import crl
from signing.identity import Identity

log = logging.getLogger("docbus.adapter")
# "stays in the outbox" lines: a long-running adapter's only word on them; a one-shot command
# (`docbus send`, `docbus inbox`) says the same in its own words and quiets this one
outbox_log = logging.getLogger("docbus.adapter.outbox")
SUPERSEDED = {REVOKE: "revoked", UPDATE: "updated", 3: "replaced"}
RECEIVE_PREFETCH = 16  # deliveries held at once (chunks 1 MiB, envelopes at most 4 MiB): bounds memory
UPLOAD_WINDOW = 8  # unconfirmed chunks in flight while a large file is sent
ANSWER_EVERY = 0.1  # s: under load, the automatic 01s wait at most this long to go out together
ENVELOPE_HEADROOM = 512 * 1024  # bytes of an envelope kept for its header (a content of 100,000 characters)
OUTSIDE = (  # what to do with an outside original too large to read whole
    ", more than an edXML file read whole may be: send its files as a document of this agency's "
    "('docbus send …'), larger files travel in chunks"
)
# said in the content of a sao lục whose original came from outside the bus
OUTSIDE_NOTE = ", nhận ngoài mạng văn bản của tỉnh; chữ ký số của bản gốc chưa được kiểm tra"


@dataclass
class SendResult:
    document_id: str
    digest: str
    published: bool
    error: str | None = None  # why it stayed in the outbox (not published): the broker's answer


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox row as written, what publishing it needs (a row read back serves as well)."""

    digest: str
    kind: str
    document_id: str
    recipients: str
    urgent: bool
    raw: bytes


@dataclass(frozen=True)
class NumberInUse:
    """A document this agency already sent under the number a new one asks for."""

    document_id: str
    digest: str  # of the signed envelope, as SendResult.digest
    created_at: dt.datetime  # when it went into the outbox (UTC)
    published: bool  # False: still queued in the outbox

    def refusal(self, hint: str = "") -> Refused:
        """The refusal of a new document under the same number; ``hint``: what else to do."""
        where = "sent" if self.published else "queued in the outbox, to be sent when the broker takes it"
        return Refused(
            f"{self.document_id} was already {where} on {edxml.vn_text(self.created_at)} (UTC+7); "
            f"give the new document its own number{hint}",
            reason="number-in-use",
        )


@dataclass
class SentItem:
    """A document this agency sent (văn bản đi) and what became of it, from its own store:
    the statuses its recipients answered, the data centre's receipt, or its 02 if it refused it."""

    document_id: str
    digest: str
    sent_at: str  # when it went into the outbox (UTC)
    published: bool  # False: still queued in the outbox
    subject: str
    answers: dict[str, tuple[str, str] | None]  # recipient -> its latest (status code, received at), or None
    refused: str | None = None  # the data centre's 02, "[reason] detail", if it refused this submission
    business_doc_type: int = 0  # 1 thu hồi, 2 cập nhật, 3 thay thế: about a document sent before
    # recipient -> what its latest status says beyond the code's own name (why it refused a recall, …)
    notes: dict[str, str] = field(default_factory=dict)
    # when the data centre relayed it to the recipients' inboxes, from its sealed receipt (UTC)
    accepted_at: str | None = None


@dataclass
class InboxItem:
    digest: str
    kind: str
    state: str  # new (stored, not yet handed over) | handed | invalid
    sender: str
    document_id: str
    subject: str
    status_code: str | None
    reason: str | None = None
    received_at: str = ""
    priority: int = 0
    superseded: str | None = None  # revoked | updated | replaced, by a later message from its sender
    answered: str | None = None  # the latest status this agency sent about it (01 on its own, 03, …)


Handler = Callable[[InboxItem, edxml.Message, bytes], None]


class Adapter:
    def __init__(
        self,
        settings: Settings,
        organ_id: str,
        *,
        transport: Transport | None = None,
        on_receive: Handler | None = None,
        auto_arrived: bool = True,
    ) -> None:
        self.settings = settings
        self.organ_id = organ_id
        self.names = Names(settings.namespace)
        self.identity = Identity.load(organ_id, settings.agency_home(organ_id))
        self.me = Organ(organ_id, self.identity.name)
        self.home = settings.agency_home(organ_id)
        self.store = open_store(self.home / "store.db")
        self.chunks = ChunkStore(self.home / "files")  # large files sent and received (bus.blobs)
        self.crl_path = self.home / "crl.pem"
        self.trust = load_trust(settings, self.crl_path if self.crl_path.exists() else None)
        self.amqp_url = self._amqp_url()
        self._transport = transport
        self.on_receive = on_receive
        # told of each document of ours the data centre relayed: (DocumentId, digest of what we
        # submitted, when, UTC), once its receipt is in the store (hand_pending: again after a
        # failure, or when a clerk's listing took the receipt in)
        self.on_receipt: Callable[[str, str, dt.datetime], None] | None = None
        self.auto_arrived = auto_arrived
        self._last_failure: str | None = None

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        self._drop_connection()
        self.store.close()

    def _drop_connection(self) -> None:
        if isinstance(self._transport, AmqpTransport):
            self._transport.close()
            self._transport = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = AmqpTransport(self.amqp_url)
        return self._transport

    # -- sending
    def send(
        self,
        recipients: Sequence[Organ | str],
        *,
        subject: str,
        number: str,
        notation: str,
        files: Iterable[Path | str | Attachment] = (),
        type_name: str = "Công văn",
        priority: int = 0,
        content: str = "",
        business_doc_type: int = 0,
        about: str = "",
        replaces: Sequence[str] = (),
        paper_only: bool = False,
        security_level: str = "",
        zipped: bool = False,
    ) -> SendResult:
        """Sign an edoc, keep it in the outbox, publish it; returns its DocumentId.

        ``business_doc_type`` 1 (revoke) or 2 (update) with ``about`` = the DocumentId
        concerned (the message keeps that DocumentId); 3 (replace) with ``replaces``.
        """
        inline = self.settings.limits.inline_attachment_bytes
        attachments = self._fitted(
            [f if isinstance(f, Attachment) else _attachment(Path(f), zipped, inline) for f in files]
        )
        organs = [r if isinstance(r, Organ) else Organ(r) for r in recipients]
        edoc = compose.new_edoc(
            self.me,
            organs,
            subject=subject,
            number=number,
            notation=notation,
            type_name=type_name,
            priority=priority,
            attachments=attachments,
            content=content,
            business_doc_type=business_doc_type,
            paper_only=paper_only,
            security_level=security_level,
        )
        if business_doc_type in (REVOKE, UPDATE):
            if not about:
                raise DocbusError("a revocation or update names the document it is about", reason="usage")
            edoc.document_id = about
            edoc.business.document_id = about
        elif business_doc_type == 3:
            if not replaces:
                raise DocbusError("a replacement names the documents it replaces", reason="usage")
            edoc.business.replacements = [edxml.ReplacementInfo(d, [o.organ_id for o in organs]) for d in replaces]
        return self.submit(edoc)

    def _fitted(self, attachments: list[Attachment]) -> list[Attachment]:
        """The files inside the envelope only while it stays under the broker's bound
        (``Limits.max_envelope_bytes``); the others by reference, in chunks.

        Each file over ``inline_attachment_bytes`` goes by reference, then the largest of the
        rest until they fit together: three 1.9 MB scans are each small enough, not all three.
        """
        limits = self.settings.limits
        room = limits.max_envelope_bytes - ENVELOPE_HEADROOM
        out = list(attachments)
        inline = [i for i, a in enumerate(out) if a.external is None]
        inline.sort(key=lambda i: len(out[i].encoded()), reverse=True)
        total = sum(len(out[i].encoded()) for i in inline)
        for i in inline:
            a = out[i]
            if total <= room and a.size <= limits.inline_attachment_bytes:
                continue
            total -= len(a.encoded())
            ext, path = self.chunks.keep(a.data)
            out[i] = Attachment(a.content_id, a.name, a.content_type, a.description or a.name, external=ext, path=path)
        return out

    def number_in_use(self, number: str, notation: str) -> NumberInUse | None:
        """What this agency already sent today under số ``number``/``notation``, if anything.

        A new document's DocumentId is ``{OrganId},{date},{number}/{notation}``: a second
        document under the same number would share it, and every status, trace and inbox
        lookup by DocumentId would then name two documents.  Clerks re-send after a "queued"
        or type last week's number by mistake; ``docbus send`` asks this first.  A document
        the hub refused (its 02) leaves its number free for the corrected one.
        """
        document_id = compose.document_id(self.organ_id, edxml.now_vn().date(), number, notation)
        if edxml.not_utf8(document_id):  # no DocumentId sent can hold it (nor can the store bind it)
            return None
        Outbox = self.store.Outbox
        sent = Outbox.select(Outbox.digest, Outbox.created_at, Outbox.published_at).where(
            (Outbox.kind == "edoc") & (Outbox.document_id == document_id[:500])
        )
        refused = self._hub_refusals([document_id[:500]])
        standing = [r for r in sent.order_by(Outbox.id) if r.digest not in refused]
        if not standing:
            return None
        last = standing[-1]
        return NumberInUse(document_id, last.digest, last.created_at, last.published_at is not None)

    def _by_document(self, model: Any, kind: str, document_ids: Sequence[str]) -> Iterator[Any]:
        """``model``'s rows of ``kind`` about these DocumentIds, in id order; asked in slices of
        500, as a year's register is more DocumentIds than one statement may bind."""
        rows = (
            r
            for at in range(0, len(document_ids), 500)
            for r in model.select().where((model.kind == kind) & model.document_id.in_(document_ids[at : at + 500]))
        )
        return iter(sorted(rows, key=lambda r: r.id))

    def _hub_refusals(self, document_ids: Sequence[str]) -> dict[str, str]:
        """Refused submission's digest -> the data centre's 02 about it ("[reason] detail"): the
        02 names the digest of the submission it refused."""
        refusals = {}
        for st in self._by_document(self.store.Inbox, "status", document_ids):
            if st.sender == self.settings.hub_organ_id and "(submission sha256:" in st.subject:
                detail, digest = st.subject.rsplit(" (submission sha256:", 1)
                refusals[digest.rstrip(")")] = detail
        return refusals

    def sent(
        self, *, since: dt.datetime | None = None, last: int | None = None, document_id: str | None = None
    ) -> list[SentItem]:
        """The documents this agency sent, oldest first (``since``: put in the outbox at or after,
        UTC; ``last``: only the newest so many; ``document_id``: only that one, with its
        revocations and updates), each with its recipients' latest status."""
        Outbox = self.store.Outbox
        query = Outbox.select().where(Outbox.kind == "edoc")
        if document_id is not None and edxml.not_utf8(document_id):
            return []  # no DocumentId sent can hold it
        if document_id is not None:
            query = query.where(Outbox.document_id == document_id[:500])
        if since is not None:
            query = query.where(Outbox.created_at >= since)
        rows = list(reversed(list(query.order_by(Outbox.id.desc()).limit(last))))
        ids = list({r.document_id for r in rows})
        hub = self._hub_refusals(ids)
        latest: dict[tuple[str, str], tuple[str, str]] = {}
        notes: dict[tuple[str, str], str] = {}
        for st in self._by_document(self.store.Inbox, "status", ids):
            if st.sender != self.settings.hub_organ_id:
                key, code = (st.document_id, st.sender), st.status_code or ""
                latest[key] = (code, f"{st.received_at:%Y-%m-%d %H:%M:%S}")
                notes[key] = edxml.status_note(code, st.subject)
        out = []
        for r in rows:
            msg = None
            with contextlib.suppress(DocbusError):  # our own signed bytes: read for the header only
                msg = edxml.parse_tree(safexml.parse(bytes(r.raw), self.settings.limits))
            refused = hub.get(r.digest)
            recipients = [c for c in r.recipients.split(",") if c]
            out.append(
                SentItem(
                    r.document_id,
                    r.digest,
                    f"{r.created_at:%Y-%m-%d %H:%M:%S}",
                    r.published_at is not None,
                    msg.subject if isinstance(msg, Edoc) else "",
                    # a refused submission reached nobody: answers under its DocumentId are another's
                    {c: None if refused else latest.get((r.document_id, c)) for c in recipients},
                    refused,
                    msg.business.doc_type if isinstance(msg, Edoc) else 0,
                    {c: n for c in recipients if not refused and (n := notes.get((r.document_id, c)))},
                    f"{r.accepted_at:%Y-%m-%d %H:%M:%S}" if r.accepted_at else None,
                )
            )
        return out

    def sent_count(self, *, since: dt.datetime | None = None) -> int:
        Outbox = self.store.Outbox
        query = Outbox.select().where(Outbox.kind == "edoc")
        return (query.where(Outbox.created_at >= since) if since is not None else query).count()

    def answered(self, document_id: str, code: str) -> SendResult | None:
        """The status ``code`` this agency already put in its outbox about ``document_id``, if any."""
        if edxml.not_utf8(document_id):  # no DocumentId can hold it (nor can the store bind it)
            return None
        for r in reversed(list(self._by_document(self.store.Outbox, "status", [document_id[:500]]))):
            if peek_status_code(bytes(r.raw)) == code:  # our own signed bytes
                return SendResult(r.document_id, r.digest, r.published_at is not None, r.last_error)
        return None

    def send_status(self, document_id: str, edoc_sender: str, code: str, description: str = "") -> SendResult:
        return self.submit(self._status(document_id, edoc_sender, code, description))

    def recall(self, document_id: str, description: str = "Đề nghị thu hồi văn bản") -> SendResult:
        """Ask every recipient of our own document to agree to its recall (status 13)."""
        return self.send_status(document_id, self.organ_id, "13", description)

    def _status(self, document_id: str, edoc_sender: str, code: str, description: str = "") -> edxml.Status:
        return compose.new_status(
            self.me, edoc_sender=edoc_sender, document_id=document_id, code=code, description=description
        )

    def submit(self, msg: edxml.Message) -> SendResult:
        item = self._to_outbox(msg)
        large = any(a.external is not None for a in getattr(msg, "attachments", []))
        published = self._publish(item, uploads=large)
        return SendResult(msg.document_id, item.digest, published, None if published else self._last_failure)

    def _to_outbox(self, msg: edxml.Message) -> OutboxEntry:
        """Sign ``msg`` and commit it to the outbox; returns what was written (the same bytes
        under the same digest if they were there already), without reading it back.

        A large file is first copied under its digest (the clerk may delete the original),
        and its upload recorded with the message, so both go out or neither."""
        large = [a for a in getattr(msg, "attachments", []) if a.external is not None]
        for a in large:
            self.chunks.adopt(a.path, a.external)
        if isinstance(msg, Edoc):
            try:
                check_secrecy(msg)  # before signing: a secret document never leaves the agency
            except PolicyRefusal as exc:
                raise PolicyRefusal(f"not sent: {exc.message}", reason=exc.reason) from exc
        raw = compose.sign(msg, self.identity)
        self._check_profile(raw)
        digest = sha256(raw)
        with self.store.write():
            entry = self._outbox_row(msg, raw, digest)
            for a in large:
                self.store.Upload.insert(
                    outbox_digest=digest,
                    sha256=a.external.sha256,
                    size=a.external.size,
                    chunk_size=a.external.chunk_size,
                ).execute()
        return entry

    def _check_profile(self, raw: bytes) -> None:
        """Refuse here, before the outbox, what the router would refuse for its shape (an empty
        subject, number or recipient list): the clerk sees why at once instead of a 02 later.
        The directive's policy on a well-formed document (no electronic file, unknown
        recipients) stays the router's, answered with a 02 as ever."""
        try:
            schema.validate(safexml.parse(raw, self.settings.limits), "strict")
        except SchemaViolation as exc:
            raise SchemaViolation(f"not sent, the bus would refuse it: {exc.message}", reason=exc.reason) from exc

    def _outbox_row(self, msg: edxml.Message, raw: bytes, digest: str) -> OutboxEntry:
        row: dict[str, Any] = {
            "digest": digest,
            "kind": msg.kind,
            "document_id": msg.document_id[:500],
            "recipients": ",".join(o.organ_id for o in getattr(msg, "recipients", [])),
            "urgent": isinstance(msg, Edoc) and msg.priority >= URGENT_PRIORITY,
            "raw": raw,
        }
        statements.insert_many(self.store.Outbox, [row], ignore=True)
        return OutboxEntry(**row)

    def _publish(self, item: Any, *, uploads: bool = True) -> bool:
        """Publish one outbox item, its large files first; ``uploads=False``: it has none."""
        Outbox = self.store.Outbox
        try:
            if uploads:
                self._upload(item)
            self.transport.publish(
                self.names.submit,
                Names.submit_key(item.kind, self.organ_id, urgent=bool(item.urgent)),
                bytes(item.raw),
                message_id=item.digest,
                user_id=self._user_id(),
            )
        except (BrokerUnavailable, DeliveryFailed) as exc:
            self._publish_failed(item, exc)
            return False
        with self.store.write(durable=False):  # lost to a power cut: published again
            statements.execute(
                Outbox,
                "outbox-published",
                [Outbox.published_at.db_value(utcnow()), 1, None, item.digest],
                lambda v: Outbox.update(published_at=v[0], attempts=Outbox.attempts + v[1], last_error=v[2]).where(
                    Outbox.digest == v[3]
                ),
            )
        return True

    def _uploads(self, item: Any) -> list[External]:
        Upload = self.store.Upload
        rows = statements.rows(
            Upload,
            "uploads-of-one",
            [item.digest],
            lambda v: Upload.select(Upload.sha256, Upload.size, Upload.chunk_size).where(Upload.outbox_digest == v[0]),
        ).tuples()
        return [External(sha, size, chunk_size) for sha, size, chunk_size in rows]

    def _upload(self, item: Any) -> None:
        """Publish the chunks of the large files ``item`` names, a few unconfirmed at a time."""
        for ext in self._uploads(item):
            key = Names.submit_key(CHUNK_KIND, self.organ_id)
            chunks = (
                Outgoing(self.names.submit, key, data, f"{ext.sha256}:{i}", chunk_headers(ext, i), self._user_id())
                for i, data in read_chunks(self.chunks.file(ext.sha256), ext)
            )
            failures = [f for f in self.transport.publish_many(chunks, window=UPLOAD_WINDOW) if f is not None]
            if failures:
                raise failures[0]

    def _publish_failed(self, item: Any, exc: BrokerUnavailable | DeliveryFailed) -> None:
        Outbox = self.store.Outbox
        if isinstance(exc, BrokerUnavailable):
            self._transport = None
        else:
            self._drop_connection()  # a refused publish closes the channel
        Outbox.update(attempts=Outbox.attempts + 1, last_error=exc.message).where(
            Outbox.digest == item.digest
        ).execute()
        self._last_failure = exc.message
        outbox_log.warning("%s stays in the outbox: %s", item.document_id, exc.message)

    def _amqp_url(self) -> str:
        """This agency's own broker user when it has one (``broker.json``), else DOCBUS_AMQP_URL."""
        creds_path = self.home / "broker.json"
        if not creds_path.exists():
            return self.settings.amqp_url
        creds = json.loads(creds_path.read_text())
        return agency_url(self.settings.amqp_url, creds["user"], creds["password"])

    def _user_id(self) -> str:
        """The broker user of this connection, which RabbitMQ checks against ``user_id``."""
        user = urlsplit(self.amqp_url).username
        return unquote(user) if user else "guest"

    def flush(self) -> int:
        """Publish what the outbox still holds, oldest first (urgent before), confirms streamed;
        returns how many went out.  What the broker did not take stays for the next flush."""
        Outbox = self.store.Outbox
        # a list, not a live cursor: SQLite would hold the write lock of each update until it closed
        waiting = list(
            statements.rows(
                Outbox,
                "outbox-waiting",
                [],
                lambda _: (
                    Outbox.select().where(Outbox.published_at.is_null()).order_by(Outbox.urgent.desc(), Outbox.id)
                ),
            )
        )
        if not waiting:
            return 0
        Upload = self.store.Upload
        with_files = {
            digest
            for (digest,) in statements.rows(
                Upload,
                "uploads-of",
                statements.padded([w.digest for w in waiting]),
                lambda v: Upload.select(Upload.outbox_digest).where(Upload.outbox_digest.in_(v)),
            ).tuples()
        }
        if len(waiting) == 1 or with_files:
            sent = 0
            for item in waiting:
                # known here: asking again per item built a query each time (a recipient's every 01)
                if not self._publish(item, uploads=item.digest in with_files):
                    break
                sent += 1
            return sent
        sent = 0
        for start in range(0, len(waiting), 200):
            chunk = waiting[start : start + 200]
            try:
                results = self.transport.publish_many([self._outgoing(item) for item in chunk])
            except (BrokerUnavailable, DeliveryFailed) as exc:
                self._publish_failed(chunk[0], exc)
                return sent
            done = [item.id for item, failure in zip(chunk, results, strict=True) if failure is None]
            with self.store.write(durable=False):  # lost to a power cut: published again
                if done:
                    statements.execute(
                        Outbox,
                        "outbox-published-ids",
                        [Outbox.published_at.db_value(utcnow()), 1, None, *statements.padded(done)],
                        lambda v: Outbox.update(
                            published_at=v[0], attempts=Outbox.attempts + v[1], last_error=v[2]
                        ).where(Outbox.id.in_(v[3:])),
                    )
                for item, failure in zip(chunk, results, strict=True):
                    if failure is not None:
                        Outbox.update(attempts=Outbox.attempts + 1, last_error=failure.message).where(
                            Outbox.id == item.id
                        ).execute()
            sent += len(done)
            if len(done) < len(chunk):
                return sent
        return sent

    def _outgoing(self, item: Any) -> Outgoing:
        key = Names.submit_key(item.kind, self.organ_id, urgent=bool(item.urgent))
        return Outgoing(self.names.submit, key, bytes(item.raw), item.digest, None, self._user_id())

    def pending(self) -> int:
        Outbox = self.store.Outbox
        return Outbox.select().where(Outbox.published_at.is_null()).count()

    # -- receiving
    def receive(
        self,
        *,
        idle_timeout: float = 1.0,
        limit: int | None = None,
        stop: Callable[[], bool] | None = None,
        hand: bool = True,
    ) -> list[InboxItem]:
        """Take what the inbox queues hold (urgent first) until idle: verify, store, answer 01, hand over.

        Deliveries that arrive together are stored in one transaction with their 01 answers,
        acked after that commit, handed over, and the answers published with streamed
        confirms.  With ``limit``, one at a time, so no more than ``limit`` are taken.

        ``hand=False``: store and answer only, leaving each item ``new`` for whoever hands
        the agency's mail to its system (``docbus adapter run`` takes such items over within
        a second): a clerk's listing must not take a document away from the drop folder.
        Without ``on_receive`` and with ``hand=True`` the items returned are the hand-over.
        """
        got: list[InboxItem] = []

        def handle(batch: list[Delivery]) -> None:
            accepted: list[tuple[InboxItem | None, Any]] = []
            receipted = 0  # outbox entries the data centre's receipts in this batch dated
            docs: list[Delivery] = []
            for d in batch:
                if is_chunk(d.headers):  # large files arrive just ahead of their envelope
                    self._stage_chunk(d)
            for each in [*(x for x in batch if not is_chunk(x.headers)), None]:
                # in order: a revocation list applies to what comes after it
                if each is None or each.headers.get("x-docbus-kind") == CRL_KIND:
                    accepted += self._accept_many([(x.body, x.message_id) for x in docs]) if docs else []
                    docs = []
                    if each is not None:
                        self.accept_crl(each.body)
                elif each.headers.get("x-docbus-kind") == receipt.KIND:
                    receipted += self.accept_receipt(each.body)
                else:
                    docs.append(each)
            for d in batch:
                d.ack()  # only after the local store committed
            bodies = {d.message_id or sha256(d.body): d.body for d in batch}
            stored = [(item, msg, bodies.get(item.digest)) for item, msg in accepted if item]
            got.extend(self._hand_many(stored) if hand else [item for item, _, _ in stored])
            if receipted and hand:
                self._hand_receipts()
            if accepted:
                waiting.append(time.monotonic())
            answer(quiet=False)

        def answer(*, quiet: bool) -> None:
            """Publish the automatic 01s, already stored in the outbox: at once when the inbox
            is quiet; under load at most every ANSWER_EVERY s, so one confirm round covers many
            and the next documents are not kept waiting behind it."""
            if waiting and (quiet or time.monotonic() - waiting[0] >= ANSWER_EVERY):
                waiting.clear()
                self.flush()

        def done() -> bool:
            return (limit is not None and len(got) >= limit) or (stop is not None and stop())

        waiting: list[float] = []  # when the oldest answer not yet published was stored
        self.transport.consume_batches(
            self.names.inboxes(self.organ_id),
            handle,
            prefetch=RECEIVE_PREFETCH if limit is None else 1,  # chunks are 1 MiB: this bounds memory
            max_batch=RECEIVE_PREFETCH if limit is None else 1,
            idle_timeout=idle_timeout,
            stop=done,
            on_idle=lambda: answer(quiet=True),
        )
        answer(quiet=True)  # after a failure, the next flush (run's loop) sends them
        return got

    def _stage_chunk(self, d: Delivery) -> None:
        try:
            self.chunks.put("hub", d.headers, d.body)
        except Refused as exc:
            log.warning("dropped a chunk: %s", exc.message)

    def _files_in_place(self, msg: edxml.Message) -> None:
        """Assemble and check each large file ``msg`` names; point its attachment at the file."""
        for att in getattr(msg, "attachments", []):
            if att.external is not None:
                att.path = self.chunks.assemble("hub", att.external)

    def accept_crl(self, data: bytes) -> int:
        """Take a revocation list from the bus if the CA signed it; returns how many serials it revokes."""
        try:
            revoked = crl.load_verified(data, self.trust.ca.cert)
        except Refused as exc:
            log.warning("ignored a revocation list: %s", exc.message)
            return 0
        dated = crl.dated(revoked)
        self.crl_path.write_bytes(data)
        self.trust = replace(
            self.trust,
            revoked_serials=self.trust.revoked_serials | frozenset(dated),
            revocations=dict(self.trust.revocations or {}) | dated,
        )
        return len(dated)

    def accept_receipt(self, data: bytes) -> int:
        """Record when the data centre relayed our documents, from its receipt (bus.receipt);
        returns how many outbox entries it dated.  An item counts only for a document in this
        agency's outbox whose SignatureValue its seal verifies against; anything else in it is
        logged and ignored.  A receipt is not mail: nothing goes to the inbox; ``on_receipt``
        hears of what it dated from :meth:`hand_pending`."""
        try:
            got = receipt.read(data)
        except Refused as exc:
            log.warning("ignored a receipt: %s", exc.message)
            return 0
        Outbox = self.store.Outbox
        wanted = {i.digest: i for i in got.items if len(i.digest) == 64}
        rows = Outbox.select().where(
            Outbox.digest.in_(list(wanted)) & (Outbox.kind == "edoc") & Outbox.accepted_at.is_null()
        )
        dated: dict[int, dt.datetime] = {}
        for row in rows if wanted else ():
            item = wanted[row.digest]
            at = edxml.parse_timestamp(item.relayed_at)
            trace = HubTrace(edxml.TraceHeader(self.settings.hub_organ_id, item.relayed_at), got.certificate, item.seal)
            try:
                if at is None:
                    raise MalformedEnvelope(
                        f"relay time {item.relayed_at!r} is not an edXML timestamp", reason="bad-receipt"
                    )
                check_hub_traces([trace], sender_signature(bytes(row.raw)), self.trust, at=at)
            except Refused as exc:
                log.warning("ignored a receipt for %s: %s", row.document_id, exc.message)
                continue
            dated[row.id] = at.astimezone(dt.UTC).replace(tzinfo=None)
        if dated:
            with self.store.write():  # before the receipt is acked: it is sent once
                for row_id, at in dated.items():
                    Outbox.update(accepted_at=at).where(Outbox.id == row_id).execute()
        return len(dated)

    def accept(self, body: bytes, message_id: str = "", *, hand: bool = True) -> InboxItem | None:
        """Verify and store one delivered message; None when it was already stored."""
        item, msg = self._accept_many([(body, message_id)])[0]
        if item is not None and hand:
            item = self._hand(item, msg)
            self.flush()
        return item

    def _accept_many(self, deliveries: Sequence[tuple[bytes, str]]) -> list[tuple[InboxItem | None, Any]]:
        """Verify each delivery, then store them all, with their 01 answers, in one transaction.

        Returns (item, verified message) per delivery; item is None when it was stored before.
        """
        Inbox = self.store.Inbox
        digests = [message_id or sha256(body) for body, message_id in deliveries]
        known = {
            d
            for (d,) in statements.rows(
                Inbox,
                "inbox-known",
                statements.padded(digests),
                lambda v: Inbox.select(Inbox.digest).where(Inbox.digest.in_(v)),
            ).tuples()
        }
        rows: list[dict[str, Any] | None] = []
        messages: list[Any] = []
        answers: list[tuple[edxml.Status, bytes]] = []
        for (body, _), digest in zip(deliveries, digests, strict=True):
            if digest in known:
                rows.append(None)
                messages.append(None)
                continue
            known.add(digest)
            row, msg = self._verified_row(body, digest)
            rows.append(row)
            messages.append(msg)
            if isinstance(msg, Edoc) and self.auto_arrived:
                arrived = self._status(msg.document_id, msg.sender.organ_id, "01")
                answers.append((arrived, compose.sign(arrived, self.identity)))
            elif msg is None and self.auto_arrived:
                answers.extend(self._refusal(body, row["reason"]))
        stored: list[str] = []
        with self.store.write():  # the documents and their 01 answers, or none of them
            for new_row, new_msg in zip(rows, messages, strict=True):
                if new_row is None or not statements.insert_many(Inbox, [new_row], ignore=True):
                    continue
                stored.append(new_row["digest"])
                if isinstance(new_msg, Edoc) and new_msg.business.doc_type in SUPERSEDED:
                    for doc in related_document_ids(new_msg):
                        Inbox.update(superseded=SUPERSEDED[new_msg.business.doc_type]).where(
                            (Inbox.document_id == doc)
                            & (Inbox.sender == new_msg.sender.organ_id)
                            & (Inbox.digest != new_row["digest"])
                        ).execute()
            for arrived, raw in answers:
                self._outbox_row(arrived, raw, sha256(raw))
        by_digest = {
            r.digest: self._item(r)
            for r in statements.rows(
                Inbox, "inbox-rows", statements.padded(stored), lambda v: Inbox.select().where(Inbox.digest.in_(v))
            )
        }
        for item in by_digest.values():
            if item.state == "invalid" and item.reason:  # "[reason] detail": callers get the reason
                item.reason = item.reason[1:].split("]", 1)[0]
        return [
            (by_digest[d], m) if d in by_digest and r is not None else (None, None)
            for d, r, m in zip(digests, rows, messages, strict=True)
        ]

    def _refusal(self, body: bytes, reason: str) -> list[tuple[edxml.Status, bytes]]:
        """A 02 for the sender of a document that does not verify here although the router
        accepted it (its certificate revoked before the relay, which the router had not seen): the
        sender learns it was not taken in, and why.  Addressed from the unverified bytes, which
        is safe because the router delivers a 02 only from a recipient of that very document;
        nothing is answered for a status or for bytes without a DocumentId."""
        document_id = peek_document_id(body)
        sender = document_id.split(",", 1)[0]
        if peek_kind(body) != "edoc" or not QCVN_ORGAN_ID.match(sender):
            return []
        try:
            refusal = self._status(document_id, sender, "02", f"{reason} (not taken in)"[:1900])
            return [(refusal, compose.sign(refusal, self.identity))]
        except Refused as exc:  # a DocumentId no envelope can carry back: kept as invalid, unanswered
            log.warning("no 02 for an invalid delivery: %s", exc.message)
            return []

    def _verified_row(self, body: bytes, digest: str) -> tuple[dict[str, Any], Any]:
        """The inbox row for one delivery: verified, or kept as invalid with the reason."""
        try:
            opened = open_envelope(body, self.trust, from_hub=True)
            self._files_in_place(opened.message)
        except Refused as exc:
            log.warning("refused a delivery: [%s] %s", exc.reason, exc.message)
            row: dict[str, Any] = {
                "digest": digest,
                "kind": "unknown",
                "state": "invalid",
                "reason": f"[{exc.reason}] {exc.message}",
                "sender": "",
                "document_id": "",
                "raw": body,
            }
            return row, None
        msg = opened.message
        row = {
            "digest": digest,
            "kind": msg.kind,
            "state": "new",
            "sender": msg.sender.organ_id,
            "document_id": msg.document_id[:500],
            "raw": body,
        }
        if isinstance(msg, Edoc):
            row.update(code=msg.code, subject=msg.subject, priority=msg.priority)
        else:
            row.update(status_code=msg.status_code, subject=msg.description, code=msg.response_for.code)
        return row, msg

    def _hand(self, item: InboxItem, msg: edxml.Message | None = None, raw: bytes | None = None) -> InboxItem:
        return self._hand_many([(item, msg, raw)])[0]

    def _hand_many(self, items: Sequence[tuple[InboxItem, edxml.Message | None, bytes | None]]) -> list[InboxItem]:
        """Give stored items to the agency's system, in order, once each; mark them handed.

        ``msg`` and ``raw``: the message as verified when it was stored and its bytes (else
        they are read back and verified again).  The marks are written together, in one
        transaction, including when the agency's handler fails part-way: what it took is
        not handed twice, the rest is handed at the next start.
        """
        Inbox = self.store.Inbox
        handed: list[InboxItem] = []
        try:
            for item, msg, raw in items:
                if item.state != "new":
                    continue
                if self.on_receive is not None:
                    if raw is None:
                        raw = bytes(Inbox.get(Inbox.digest == item.digest).raw)
                    if msg is None:
                        try:
                            msg = self._reopen(raw, item.received_at).message
                        except Refused as exc:  # altered in the store since: kept, marked, not handed
                            self._spoiled(item, exc)
                            continue
                    try:
                        self.on_receive(item, msg, raw)
                    except Exception as exc:  # the agency's system, not the bus: never read as a broker fault
                        raise HandOffFailed(
                            f"the agency's system did not take {item.kind} {item.document_id or item.digest}: "
                            f"{type(exc).__name__}: {exc}; it stays stored and is handed again at the next start"
                        ) from exc
                handed.append(item)
        finally:
            if handed:
                with self.store.write(durable=False):  # lost to a power cut: handed again at start
                    statements.execute(
                        Inbox,
                        "inbox-handed",
                        ["handed", *statements.padded([i.digest for i in handed])],
                        lambda v: Inbox.update(state=v[0]).where(Inbox.digest.in_(v[1:])),
                    )
                for item in handed:
                    item.state = "handed"
        return [item for item, _, _ in items]

    def _spoiled(self, item: InboxItem, exc: Refused) -> None:
        """A stored copy that no longer verifies (changed on disk): invalid, with the reason,
        so the rest of the inbox is still handed over and the clerk sees what happened."""
        log.error("stored %s %s no longer verifies: [%s] %s", item.kind, item.document_id, exc.reason, exc.message)
        Inbox = self.store.Inbox
        reason = f"[{exc.reason}] stored copy no longer verifies: {exc.message}"
        with self.store.write():
            Inbox.update(state="invalid", reason=reason).where(Inbox.digest == item.digest).execute()
        item.state, item.reason = "invalid", exc.reason

    def hand_pending(self) -> int:
        """Hand over what was stored but not handed: the process stopped in between, or a
        clerk's listing (``docbus inbox``) took it in from the broker meanwhile; the same for
        the data centre's receipts (``on_receipt``)."""
        Inbox = self.store.Inbox
        rows = list(Inbox.select().where(Inbox.state == "new").order_by(Inbox.priority.desc(), Inbox.id))
        self._hand_many([(self._item(row), None, bytes(row.raw)) for row in rows])
        return len(rows) + self._hand_receipts()

    def _hand_receipts(self) -> int:
        """Tell ``on_receipt`` of each relayed document it was not told of yet, then mark it."""
        if self.on_receipt is None:
            return 0
        Outbox = self.store.Outbox
        rows = list(
            Outbox.select(Outbox.id, Outbox.document_id, Outbox.digest, Outbox.accepted_at)
            .where((Outbox.kind == "edoc") & Outbox.accepted_at.is_null(False) & Outbox.receipt_handed.is_null())
            .order_by(Outbox.id)
        )
        told: list[int] = []
        try:
            for row in rows:
                try:
                    self.on_receipt(row.document_id, row.digest, row.accepted_at)
                except Exception as exc:  # the agency's system, not the bus: never read as a broker fault
                    raise HandOffFailed(
                        f"the agency's system did not take the data centre's receipt for {row.document_id}: "
                        f"{type(exc).__name__}: {exc}; it stays stored and is handed again at the next start"
                    ) from exc
                told.append(row.id)
        finally:
            if told:
                with self.store.write(durable=False):  # lost to a power cut: told again at start
                    Outbox.update(receipt_handed=True).where(Outbox.id.in_(told)).execute()
        return len(told)

    # -- the long-running process
    def run(
        self,
        *,
        stop: Callable[[], bool] | None = None,
        idle_exit: float | None = None,
        max_backoff: float = 30.0,
        pickup: Callable[[], object] | None = None,
    ) -> None:
        """Send the outbox and receive, forever: reconnects with backoff when the broker goes away.

        ``pickup``: called each round before the outbox is sent, to take what the agency's
        system left to send (:class:`adapters.pickup.Pickup`); a truthy answer counts as activity."""
        stop = stop or (lambda: False)
        self.hand_pending()
        self.chunks.sweep()  # chunks of deliveries whose envelope never came
        backoff = 0.5
        idle_since = time.monotonic()
        while not stop():
            try:
                if pickup is not None and pickup():
                    idle_since = time.monotonic()
                self.flush()
                got = self.receive(idle_timeout=0.5, stop=stop)
                if self.hand_pending():  # what another process of this agency stored meanwhile
                    idle_since = time.monotonic()
                backoff = 0.5
                if got:
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since > idle_exit and not self.pending():
                    return
            except BrokerUnavailable as exc:
                self._transport = None
                log.warning("broker unavailable, retrying in %.1f s: %s", backoff, exc.message)
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
            except OperationalError as exc:  # the local store is busy (another process writing): wait
                self._drop_connection()  # unacked deliveries go back to the queue
                log.warning("local store busy, retrying in %.1f s: %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)

    # -- reading the store
    def inbox(
        self,
        kind: str | None = None,
        *,
        since: dt.datetime | None = None,
        last: int | None = None,
        pending: bool = False,
    ) -> list[InboxItem]:
        """The local inbox, oldest first: ``kind`` 'edoc' or 'status' only, received at or
        after ``since`` (UTC), only the ``last`` so many.

        ``pending``: only the documents still to be taken up, the clerk's list: verified, not
        revoked, updated or replaced by their sender since (the later message is listed
        instead), and answered with nothing beyond the automatic 01 (not yet registered with
        a 03)."""
        Inbox = self.store.Inbox
        query = self._inbox_query("edoc" if pending else kind, since).order_by(
            Inbox.received_at.desc(), Inbox.id.desc()
        )
        if last is not None and not pending:
            query = query.limit(last)
        items = [self._item(r) for r in reversed(list(query))]
        answered = self._answered([i.document_id for i in items if i.kind == "edoc"])
        for i in items:
            if i.kind == "edoc":
                i.answered = answered.get(i.document_id)
        if pending:
            items = [i for i in items if i.state != "invalid" and i.superseded is None and i.answered in (None, "01")]
            items = items[-last:] if last is not None else items
        return items

    def _answered(self, document_ids: list[str]) -> dict[str, str]:
        """DocumentId -> the latest status code this agency sent about it."""
        statuses = self._by_document(self.store.Outbox, "status", document_ids)
        return {r.document_id: peek_status_code(bytes(r.raw)) for r in statuses}  # in id order: the latest stays

    def inbox_count(self, kind: str | None = None, *, since: dt.datetime | None = None) -> int:
        return self._inbox_query(kind, since).count()

    def _inbox_query(self, kind: str | None, since: dt.datetime | None) -> Any:
        Inbox = self.store.Inbox
        query = Inbox.select()
        if kind:
            query = query.where(Inbox.kind == kind)
        if since is not None:
            query = query.where(Inbox.received_at >= since)
        return query

    @staticmethod
    def _item(r: Any) -> InboxItem:
        return InboxItem(
            r.digest,
            r.kind,
            r.state,
            r.sender,
            r.document_id,
            r.subject,
            r.status_code,
            r.reason,
            r.received_at.isoformat(sep=" ", timespec="seconds"),
            r.priority,
            r.superseded,
        )

    def document(self, document_id: str) -> edxml.Edoc:
        return self._received(document_id)[0]

    def _received(self, document_id: str) -> tuple[edxml.Edoc, bytes]:
        """A document in this agency's inbox, verified again as of its receipt, with its stored bytes."""
        Inbox = self.store.Inbox
        row = (
            Inbox.select()
            .where((Inbox.document_id == document_id) & (Inbox.kind == "edoc") & (Inbox.state != "invalid"))
            .order_by(Inbox.id.desc())
            .first()
            if not edxml.not_utf8(document_id)  # no DocumentId received can hold it
            else None
        )
        if row is None:
            raise NotFound(
                f"{document_id!r} is not in the inbox of {self.organ_id}: new deliveries come in when the"
                f" adapter runs or with 'docbus inbox --agency {self.organ_id}'"
            )
        raw = bytes(row.raw)
        msg = self._reopen(raw, row.received_at).message
        self._files_in_place(msg)
        return msg, raw  # type: ignore[return-value]

    def send_copy(
        self,
        document_id: str,
        recipients: Sequence[Organ | str],
        *,
        number: str,
        notation: str,
        subject: str = "",
        priority: int | None = None,
        files: Iterable[Path | str | Attachment] = (),
    ) -> SendResult:
        """Sao lục: send a document this agency received on to other agencies, under its own number.

        The directive has central legal documents distributed downward electronically instead
        of as paper copies.  The copy is a new document of this agency (its own Số/Ký hiệu, its
        own signature) that carries the original's files and, as ``ban-goc.edxml``, the original
        envelope exactly as it arrived: a recipient can check the issuing agency's own signature
        and the data centre's seal on it with ``docbus verify``, not only take this agency's
        word.  Only a document that verified on arrival, and still does as of then, is copied;
        an updated one (cập nhật) as its latest version; a revoked one (thu hồi) is refused.
        ``files``: more files of this agency's own (a cover letter) go first.
        """
        original, raw = self._received(document_id)
        return self._send_copy(
            original, raw, recipients, number=number, notation=notation, subject=subject, priority=priority, files=files
        )

    def send_outside_copy(
        self,
        original: bytes | Path,
        recipients: Sequence[Organ | str],
        *,
        number: str,
        notation: str,
        subject: str = "",
        priority: int | None = None,
        files: Iterable[Path | str | Attachment] = (),
    ) -> SendResult:
        """Sao lục of a document that reached this agency outside the bus: ``original``, its edXML
        file (or that file's bytes).

        Central legal documents reach the People's Committee over the national document axis
        or from a ministry's system, signed (when at all) by a key this bus's CA did not issue:
        the original is read leniently and **not verified**
        (:func:`bus.envelope.read_unverified_edoc`), and the copy says so in its content.  The
        copy itself is this agency's document, signed by it and verified end to end like any
        other; it carries the original's files and the original file as ``ban-goc.edxml``.
        A secret marking or a revocation (thu hồi) is refused, as for :meth:`send_copy`.
        """
        limits = self.settings.limits
        bound = limits.max_outside_file_bytes
        raw = original if isinstance(original, bytes) else read_bounded(original, bound, OUTSIDE)
        try:
            edoc = read_unverified_edoc(raw, limits)
        except Refused as exc:
            if isinstance(original, bytes):
                raise
            raise type(exc)(f"{original.name}: {exc.message}", reason=exc.reason) from exc
        return self._send_copy(
            edoc,
            raw,
            recipients,
            number=number,
            notation=notation,
            subject=subject,
            priority=priority,
            files=files,
            verified=False,
        )

    def _send_copy(
        self,
        original: Edoc,
        raw: bytes,
        recipients: Sequence[Organ | str],
        *,
        number: str,
        notation: str,
        subject: str,
        priority: int | None,
        files: Iterable[Path | str | Attachment],
        verified: bool = True,
    ) -> SendResult:
        """The copy of ``original`` (``raw``: its bytes) under this agency's number, to ``recipients``."""
        document_id = original.document_id
        check_secrecy(original)  # the router refuses secrets on the bus; an outside file may carry one
        if original.business.doc_type == REVOKE:  # the newest word on it is its sender's thu hồi
            raise Refused(
                f"{document_id} was revoked (thu hồi) by {original.sender.organ_id}: a revoked document is not "
                "distributed (one distributed before is revoked with 'docbus send --revoke COPY_ID')",
                reason="revoked",
            )
        own_files = list(files)
        own = [f.name if isinstance(f, Attachment) else Path(f).name for f in own_files]
        # the original's names made safe and apart from this agency's own files (one name, one content id)
        names = attachment_files([*own, "ban-goc.edxml", *(a.name for a in original.attachments)])[len(own) :]
        copied: list[Attachment] = []
        for a, name in zip(original.attachments, names[1:], strict=True):
            cid = _content_id(name)
            if a.external is not None:  # a large file: sent again by reference, its bytes in chunks
                copied.append(replace(a, content_id=cid, name=name, description=name))
            else:  # inside the original (send() puts what does not fit in chunks).  A file the
                # original carried zipped goes unzipped: its declared type may be the ZIP's
                ctype = (mimetypes.guess_type(name)[0] or "application/octet-stream") if a.zipped else a.content_type
                copied.append(Attachment.from_bytes(name, a.data, ctype, content_id=cid))
        envelope = Attachment.from_bytes(names[0], raw, "application/xml", content_id=_content_id(names[0]))
        by = original.sender.name or original.sender.organ_id
        number_of = "/".join(x for x in (original.code_number, original.code_notation) if x)
        dated = f" ngày {original.promulgation_date}" if original.promulgation_date else ""
        return self.send(
            recipients,
            subject=subject or f"Sao lục: {original.subject}",
            number=number,
            notation=notation,
            files=[*own_files, *copied, envelope],
            type_name=original.type_name or "Công văn",
            priority=original.priority if priority is None else priority,
            content=f"Sao lục {original.type_name or 'văn bản'} số {number_of}{dated}"
            f" của {by} (DocumentId {original.document_id}){'' if verified else OUTSIDE_NOTE}: {original.subject}",
        )

    def _reopen(self, raw: bytes, received_at: dt.datetime | str) -> Opened:
        """A stored copy verified again as of when it was received (UTC).

        It verified then, so a certificate that has expired or been revoked since (the
        sender's signing device lost a year later) leaves the documents it signed before
        readable: the signer is judged as of the data centre's sealed relay time, the seal as
        of the receipt; bytes altered in the store do not verify."""
        at = dt.datetime.fromisoformat(received_at) if isinstance(received_at, str) else received_at
        at = at.replace(tzinfo=dt.UTC)
        trust = replace(self.trust, revoked_serials=self.trust.revoked_as_of(at))
        return open_envelope(raw, trust, at=at, from_hub=True)

    def save_attachments(self, document_id: str, folder: Path) -> list[Path]:
        """Write the document's attachments (verified again) into ``folder``; returns where.

        A different file of the same name already there is kept and this one numbered
        (``scan-2.pdf``); the same file saved again is left as it is."""
        edoc = self.document(document_id)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for a, name in zip(edoc.attachments, attachment_files(a.name for a in edoc.attachments), strict=True):
            target, there = beside(folder, name, a.sha256)  # never a path from the sender
            if not there:
                part = target.with_name(target.name + ".part")  # a whole file or none under its name
                if a.path is not None:
                    shutil.copyfile(a.path, part)  # a large file: copied, never read whole
                else:
                    part.write_bytes(a.data)
                part.replace(target)
            paths.append(target)
        return paths


def _content_id(name: str) -> str:
    """An attachment's Content-Id in the envelopes this adapter writes: derived from its name."""
    return f"cid:{sha256(name.encode())[:12]}"


def _attachment(path: Path, zipped: bool, inline_limit: int) -> Attachment:
    """A file to send: inside the envelope, or (over ``inline_limit``) by reference in chunks."""
    regular_file(path, "attachment ")
    byte = edxml.not_utf8(path.name)
    if byte:  # its name travels in the edXML as text
        raise Refused(
            f"the file name {edxml.show_not_utf8(path.name)!r} is not UTF-8 (it holds {byte}): the system that "
            "named it writes another encoding (TCVN3, VNI, Windows-1258?); rename the file",
            reason="file-name-encoding",
        )
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.stat().st_size > inline_limit:
        return Attachment.from_file(path, ctype, content_id=_content_id(path.name))
    return Attachment.from_bytes(path.name, path.read_bytes(), ctype, content_id=_content_id(path.name), zipped=zipped)
