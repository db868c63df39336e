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

Every outgoing message is signed and stored in the local outbox before it is published;
if the broker is down it stays there (``queued``) and ``flush`` or ``docbus adapter run``
sends it later.  Every incoming one is verified, stored durably, then acked.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from adapters.store import open_store, utcnow
from bus import compose, edxml
from bus.archive import sha256
from bus.brokeradmin import agency_url
from bus.config import Settings
from bus.edxml import Attachment, Edoc, Organ
from bus.envelope import open_envelope
from bus.errors import BrokerUnavailable, NotFound, Refused
from bus.province import CRL_KIND
from bus.router import load_trust
from bus.topology import Names
from bus.transport import AmqpTransport, Delivery, Transport
from signing import crl
from signing.identity import Identity

log = logging.getLogger("docbus.adapter")


@dataclass
class SendResult:
    document_id: str
    digest: str
    published: bool


@dataclass
class InboxItem:
    digest: str
    kind: str
    state: str
    sender: str
    document_id: str
    subject: str
    status_code: str | None
    reason: str | None = None
    received_at: str = ""


class Adapter:
    def __init__(
        self,
        settings: Settings,
        organ_id: str,
        *,
        transport: Transport | None = None,
        on_receive: Callable[[InboxItem, edxml.Message, bytes], None] | None = None,
        auto_arrived: bool = True,
    ) -> None:
        self.settings = settings
        self.organ_id = organ_id
        self.names = Names(settings.namespace)
        self.identity = Identity.load(organ_id, settings.agency_home(organ_id))
        self.me = Organ(organ_id, self.identity.name)
        self.home = settings.agency_home(organ_id)
        self.store = open_store(self.home / "store.db")
        self.crl_path = self.home / "crl.pem"
        self.trust = load_trust(settings, self.crl_path if self.crl_path.exists() else None)
        self.amqp_url = self._amqp_url()
        self._transport = transport
        self.on_receive = on_receive
        self.auto_arrived = auto_arrived

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        if self._transport is not None and isinstance(self._transport, AmqpTransport):
            self._transport.close()
            self._transport = None
        self.store.close()

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
        related: Sequence[edxml.ResponseFor] = (),
        paper_only: bool = False,
        security_level: str = "",
        zipped: bool = False,
    ) -> SendResult:
        """Sign an edoc, keep it in the outbox, publish it; returns its DocumentId."""
        attachments = [f if isinstance(f, Attachment) else _attachment(Path(f), zipped) for f in files]
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
            related=related,
            paper_only=paper_only,
            security_level=security_level,
        )
        return self.submit(edoc)

    def send_status(self, document_id: str, edoc_sender: str, code: str, description: str = "") -> SendResult:
        status = compose.new_status(
            self.me, edoc_sender=edoc_sender, document_id=document_id, code=code, description=description
        )
        return self.submit(status)

    def submit(self, msg: edxml.Message) -> SendResult:
        raw = compose.sign(msg, self.identity)
        return self.submit_raw(raw, msg.kind, msg.document_id, [o.organ_id for o in getattr(msg, "recipients", [])])

    def submit_raw(self, raw: bytes, kind: str, document_id: str, recipients: Sequence[str] = ()) -> SendResult:
        """Store ``raw`` in the outbox (durably), then try to publish it."""
        digest = sha256(raw)
        Outbox = self.store.Outbox
        with self.store.db.atomic():
            Outbox.insert(
                digest=digest, kind=kind, document_id=document_id[:500], recipients=",".join(recipients), raw=raw
            ).on_conflict_ignore().execute()
        item = Outbox.get(Outbox.digest == digest)
        return SendResult(document_id, digest, self._publish(item))

    def _publish(self, item: object) -> bool:
        Outbox = self.store.Outbox
        try:
            self.transport.publish(
                self.names.submit,
                Names.submit_key(item.kind, self.organ_id),  # type: ignore[attr-defined]
                bytes(item.raw),  # type: ignore[attr-defined]
                message_id=item.digest,  # type: ignore[attr-defined]
                user_id=self._user_id(),
            )
        except BrokerUnavailable as exc:
            self._transport = None
            Outbox.update(attempts=Outbox.attempts + 1, last_error=exc.message).where(Outbox.id == item.id).execute()  # type: ignore[attr-defined]
            return False
        Outbox.update(published_at=utcnow(), attempts=Outbox.attempts + 1, last_error=None).where(
            Outbox.id == item.id
        ).execute()  # type: ignore[attr-defined]
        return True

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
        """Publish what the outbox still holds; returns how many went out."""
        Outbox = self.store.Outbox
        sent = 0
        for item in Outbox.select().where(Outbox.published_at.is_null()).order_by(Outbox.id):
            if not self._publish(item):
                break
            sent += 1
        return sent

    def pending(self) -> int:
        Outbox = self.store.Outbox
        return Outbox.select().where(Outbox.published_at.is_null()).count()

    # -- receiving
    def receive(self, *, idle_timeout: float = 1.0, limit: int | None = None) -> list[InboxItem]:
        """Take what the inbox queue holds (until idle), verify, store, answer 01."""
        got: list[InboxItem] = []

        def handle(d: Delivery) -> None:
            if d.headers.get("x-docbus-kind") == CRL_KIND:
                self.accept_crl(d.body)
                d.ack()
                return
            item = self.accept(d.body, d.message_id)
            d.ack()  # only after the local store committed
            if item is not None:
                got.append(item)

        self.transport.consume(
            self.names.inbox(self.organ_id),
            handle,
            idle_timeout=idle_timeout,
            stop=(lambda: limit is not None and len(got) >= limit),
        )
        return got

    def accept_crl(self, data: bytes) -> int:
        """Take a revocation list from the bus if the CA signed it; returns how many serials it revokes."""
        try:
            revoked = crl.load_verified(data, self.trust.ca.cert)
        except Refused as exc:
            log.warning("ignored a revocation list: %s", exc.message)
            return 0
        serials = crl.serials(revoked)
        self.crl_path.write_bytes(data)
        self.trust = replace(self.trust, revoked_serials=self.trust.revoked_serials | serials)
        return len(serials)

    def accept(self, body: bytes, message_id: str = "") -> InboxItem | None:
        """Verify and store one delivered message; None when it was already stored."""
        Inbox = self.store.Inbox
        digest = message_id or sha256(body)
        if Inbox.get_or_none(Inbox.digest == digest) is not None:
            return None
        try:
            opened = open_envelope(body, self.trust, from_hub=True)
        except Refused as exc:
            with self.store.db.atomic():
                Inbox.insert(
                    digest=digest,
                    kind="unknown",
                    state="invalid",
                    reason=f"[{exc.reason}] {exc.message}",
                    sender="",
                    document_id="",
                    raw=body,
                ).on_conflict_ignore().execute()
            return InboxItem(digest, "unknown", "invalid", "", "", "", None, exc.reason)
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
        with self.store.db.atomic():
            inserted = Inbox.insert(**row).on_conflict_ignore().execute()
        item = InboxItem(
            digest, msg.kind, "new", msg.sender.organ_id, msg.document_id, row["subject"], row.get("status_code")
        )
        if not inserted:
            return None
        if self.on_receive is not None:
            self.on_receive(item, msg, body)
        if isinstance(msg, Edoc) and self.auto_arrived and msg.business.doc_type == 0:
            self.send_status(msg.document_id, msg.sender.organ_id, "01")
        return item

    def inbox(self, kind: str | None = None) -> list[InboxItem]:
        Inbox = self.store.Inbox
        query = Inbox.select().order_by(Inbox.received_at, Inbox.id)
        if kind:
            query = query.where(Inbox.kind == kind)
        return [
            InboxItem(r.digest, r.kind, r.state, r.sender, r.document_id, r.subject, r.status_code, r.reason)
            for r in query
        ]

    def document(self, document_id: str) -> edxml.Edoc:
        Inbox = self.store.Inbox
        row = (
            Inbox.select()
            .where((Inbox.document_id == document_id) & (Inbox.kind == "edoc") & (Inbox.state != "invalid"))
            .order_by(Inbox.id.desc())
            .first()
        )
        if row is None:
            raise NotFound(f"{document_id!r} is not in the inbox of {self.organ_id}")
        return open_envelope(bytes(row.raw), self.trust, from_hub=True).message  # type: ignore[return-value]

    def save_attachments(self, document_id: str, folder: Path) -> list[Path]:
        """Write the document's attachments (verified again) into ``folder``."""
        edoc = self.document(document_id)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for a in edoc.attachments:
            target = folder / Path(a.name).name  # never a path from the sender
            target.write_bytes(a.data)
            paths.append(target)
        return paths


def _attachment(path: Path, zipped: bool) -> Attachment:
    if not path.is_file():
        raise NotFound(f"attachment {path} does not exist")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Attachment.from_bytes(
        path.name, path.read_bytes(), ctype, content_id=f"cid:{sha256(path.name.encode())[:12]}", zipped=zipped
    )
