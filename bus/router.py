"""The central router: validate, archive, deliver, answer.

For each submission on ``<ns>.router``::

    digest seen before? -> finish the deliveries a dead router left undone, ack
    open_envelope (parse, XSD, signature, CA)  -+
    routing key / broker user / certificate agree |-> refused: quarantine + status 02 to sender
    sender registered, policy (bus.policy)        -+
    archive (one transaction) -> append hub TraceHeader -> publish to each inbox, confirmed
    -> mark delivered -> ack

Nothing is acked before it is archived and every delivery is confirmed, so a router killed
at any point loses nothing: the broker redelivers, and the digest makes the rest idempotent.
Routers are stateless; run as many as needed on the same queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peewee import OperationalError

from bus import compose, edxml, search
from bus.archive import Archive, Message, sha256
from bus.config import Settings
from bus.deadletter import REPLAY_KEY, REPLAY_USER, record_failure
from bus.edxml import Edoc, Organ, Status
from bus.envelope import Opened, Trust, append_hub_trace
from bus.errors import BrokerUnavailable, PolicyRefusal, Refused
from bus.gate import Gate, recipients_of
from bus.policy import related_document_ids
from bus.topology import URGENT_PRIORITY, Names
from bus.transport import Delivery, DeliveryFailed, Transport
from signing.identity import Identity

log = logging.getLogger("docbus.router")
RECALL_REQUEST = "13"
TRANSIENT_RETRIES = 5
QUARANTINE_HEAD = 64 * 1024  # bytes kept of a refusal over the size limit


@dataclass
class Outcome:
    state: str  # accepted | quarantined | duplicate
    digest: str
    reason: str | None = None
    detail: str | None = None


class Router:
    def __init__(self, settings: Settings, transport: Transport, archive: Archive, trust: Trust, hub: Identity) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.transport = transport
        self.archive = archive
        self.trust = trust
        self.hub = hub
        self.gate = Gate(settings, trust)
        self.registry = self.gate.registry
        self.processed = 0

    # -- the AMQP side
    def handle(self, delivery: Delivery) -> None:
        routing_key, user_id = delivery.routing_key, delivery.user_id
        if routing_key in (self.names.router_queue, self.names.router_urgent):
            # replayed by an operator through the default exchange, which no agency may write to
            routing_key = str(delivery.headers.get(REPLAY_KEY, ""))
            user_id = delivery.headers.get(REPLAY_USER) or None
        try:
            self._process_retrying(delivery.body, routing_key, user_id, delivery.redelivered)
        except BrokerUnavailable:
            raise
        except DeliveryFailed as exc:
            log.error("delivery failed, will retry: %s", exc)
            delivery.reject(requeue=True)
        except Exception as exc:
            # An unexpected error: the quorum queue's delivery limit dead-letters the
            # message after a bounded number of attempts; the router goes on.
            log.exception("router failed on a submission (routing key %s)", delivery.routing_key)
            record_failure(sha256(delivery.body), routing_key, f"{type(exc).__name__}: {exc}")
            delivery.reject(requeue=True)
        else:
            delivery.ack()
            self.processed += 1

    def _process_retrying(self, body: bytes, routing_key: str, user_id: str | None, redelivered: bool) -> Outcome:
        """A busy or briefly unreachable database is retried here: requeueing would spend the
        message's delivery limit on a fault that is not the message's."""
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return self.process(
                    body, routing_key=routing_key, user_id=user_id, redelivered=redelivered or attempt > 0
                )
            except OperationalError as exc:
                log.warning("archive busy or unreachable (%s), retrying", exc)
                time.sleep(0.5 * (attempt + 1))
        return self.process(body, routing_key=routing_key, user_id=user_id, redelivered=True)

    def run(
        self, *, idle_timeout: float | None = None, stop: Callable[[], bool] | None = None, prefetch: int = 20
    ) -> None:
        self.transport.consume(
            [self.names.router_urgent, self.names.router_queue],
            self.handle,
            prefetch=prefetch,
            idle_timeout=idle_timeout,
            stop=stop,
        )

    def serve(
        self,
        connect: Callable[[], Transport],
        *,
        stop: Callable[[], bool] | None = None,
        idle_exit: float | None = None,
        prefetch: int = 20,
        max_backoff: float = 30.0,
    ) -> None:
        """Run until ``stop()``, reconnecting with backoff whenever the broker goes away.

        Whatever was in flight when the connection dropped is redelivered by the broker and
        finished idempotently (archive and deliveries are keyed by digest).
        """
        backoff = 0.5
        while not (stop is not None and stop()):
            try:
                self.transport = connect()
                backoff = 0.5
                self.run(idle_timeout=idle_exit, stop=stop, prefetch=prefetch)
                if idle_exit is not None:
                    return
            except BrokerUnavailable as exc:
                log.warning("broker unavailable, reconnecting in %.1f s: %s", backoff, exc.message)
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
            finally:
                close = getattr(self.transport, "close", None)
                if close is not None:
                    close()

    # -- the work
    def process(
        self, body: bytes, *, routing_key: str, user_id: str | None = None, redelivered: bool = True
    ) -> Outcome:
        """Check, archive, deliver.  ``redelivered``: the broker's flag; a fresh copy of bytes
        already archived is a replay, a redelivered one is a router that died mid-way."""
        digest = sha256(body)
        claimed = Names.claimed_sender(routing_key)
        # the common case is a new message: a cheap existence probe before any full row is read
        seen = Message.select(Message.id).where(Message.digest == digest).exists()
        existing = Message.get(Message.digest == digest) if seen else None
        if existing is not None:
            if redelivered or self.archive.undelivered(existing):
                self._deliver(existing, body)
                return Outcome("duplicate", digest, existing.reason)
            if existing.state == "accepted":
                self._answer_refusal(
                    claimed,
                    existing.document_id,
                    "replay",
                    f"already accepted on {existing.received_at:%Y-%m-%d %H:%M:%S} UTC; not delivered again",
                    digest,
                )
                return Outcome("quarantined", digest, "replay", "identical bytes already accepted")
            return Outcome("duplicate", digest, existing.reason)
        try:
            opened = self.gate.check(body, claimed=claimed, user_id=user_id)
            msg = opened.message
            content = _content_digest(opened)
            if (
                content
                and Message.select(Message.id)
                .where(
                    (Message.content_digest == content)
                    & (Message.sender == msg.sender.organ_id)
                    & (Message.state == "accepted")
                    & (Message.document_id == msg.document_id[:500])
                )
                .exists()
            ):
                raise PolicyRefusal(f"{msg.document_id} with this signed content was already accepted", reason="replay")
            fields = self._fields(msg, user_id) | {"content_digest": content}
            if isinstance(msg, Edoc):
                record, _ = self.archive.record(
                    body, fields=fields, recipients=[r.organ_id for r in msg.recipients], attachments=msg.attachments
                )
            else:
                record, _ = self.archive.record(
                    body, fields=fields, recipients=self._status_recipients(msg), status=self._status_event(msg)
                )
        except Refused as exc:
            self._quarantine(body, exc, claimed, user_id)
            return Outcome("quarantined", digest, exc.reason, exc.message)
        self._deliver(record, body)
        return Outcome("accepted", digest)

    @staticmethod
    def _status_recipients(msg: Status) -> list[str]:
        """A recall request (13) goes to the document's recipients; every other status to its sender."""
        if msg.status_code == RECALL_REQUEST:
            return sorted(recipients_of(msg.document_id, msg.sender.organ_id) or ())
        return [msg.response_for.organ_id]

    @staticmethod
    def _fields(msg: edxml.Message, user_id: str | None) -> dict[str, object]:
        base = {
            "kind": msg.kind,
            "state": "accepted",
            "user_id": user_id,
            "sender": msg.sender.organ_id,
            "document_id": msg.document_id[:500],
        }
        if isinstance(msg, Edoc):
            base.update(
                code_number=msg.code_number,
                code_notation=msg.code_notation,
                doc_type=msg.doc_type,
                type_name=msg.type_name,
                subject=msg.subject,
                promulgation_date=msg.promulgation_date,
                priority=msg.priority,
                business_doc_type=msg.business.doc_type,
                related_document_id=(related_document_ids(msg) or [None])[0],
                search_text=search.text_of(msg),
            )
        else:
            base.update(
                status_code=msg.status_code, response_for_organ=msg.response_for.organ_id, subject=msg.description
            )
        return base

    @staticmethod
    def _status_event(msg: Status) -> dict[str, object]:
        return {
            "document_id": msg.document_id[:500],
            "edoc_sender": msg.response_for.organ_id,
            "organ_id": msg.sender.organ_id,
            "status_code": msg.status_code,
            "description": msg.description,
            "timestamp": msg.timestamp,
        }

    def _deliver(self, record: Message, body: bytes) -> None:
        pending = self.archive.undelivered(record)
        if not pending:
            return
        out = append_hub_trace(body, self.hub.organ_id)
        headers = {
            "x-docbus-kind": record.kind,
            "x-docbus-sender": record.sender,
            "x-docbus-document-id": record.document_id,
            "x-docbus-priority": record.priority,
        }
        urgent = record.kind == "edoc" and record.priority >= URGENT_PRIORITY
        for organ_id in pending:
            key = Names.deliver_key(organ_id, urgent=urgent)
            self.transport.publish(self.names.deliver, key, out, message_id=record.digest, headers=headers)
            self.archive.mark_delivered(record, [organ_id])

    def _quarantine(self, body: bytes, exc: Refused, claimed: str, user_id: str | None) -> None:
        """Keep the refused bytes with the reason and tell the sender with a status 02."""
        document_id = _peek_document_id(body) or f"sha256:{sha256(body)}"
        log.warning("refused %s from %s: %s (%s)", document_id, claimed or user_id, exc.reason, exc.message)
        oversized = len(body) > self.settings.limits.max_envelope_bytes
        self.archive.record(
            body,
            fields={
                "kind": _peek_kind(body),
                "state": "quarantined",
                "reason": exc.reason,
                "reason_detail": exc.message,
                "user_id": user_id,
                "sender": claimed or (user_id or ""),
                "document_id": document_id[:500],
            },
            keep=QUARANTINE_HEAD if oversized else None,
        )
        self._answer_refusal(claimed, document_id, exc.reason, exc.message, sha256(body))

    def _answer_refusal(self, claimed: str, document_id: str, reason: str, detail: str, digest: str) -> None:
        """Status 02 from the hub; it names the refused submission's digest so each refusal has its answer."""
        if claimed not in self.registry.snapshot().enabled:
            return  # nobody to answer: the claimed sender is unknown; the refusal stays in quarantine
        status = compose.new_status(
            Organ(self.hub.organ_id, self.hub.name),
            edoc_sender=claimed,
            document_id=document_id,
            code="02",
            description=f"[{reason}] {detail}"[:1900] + f" (submission sha256:{digest})",
        )
        raw = compose.sign(status, self.hub)
        record, _ = self.archive.record(
            raw,
            fields=self._fields(status, None) | {"reason": reason},
            recipients=[claimed],
            status=self._status_event(status),
        )
        self._deliver(record, raw)


def _content_digest(opened: Opened) -> str:
    """The signed DigestValue: equal for every byte-level variant of the same signed content."""
    value = opened.signature_digest
    return value[:100] if value else ""


def _peek_document_id(body: bytes) -> str:
    """Best-effort DocumentId of a refused message, for the answer only (never trusted)."""
    tag = b"DocumentId>"
    start = body.find(tag, 0, 1_000_000)
    end = body.find(b"<", start + len(tag)) if start >= 0 else -1
    if end < 0:
        return ""
    try:
        return body[start + len(tag) : end].decode("utf-8").strip()[:300]
    except UnicodeDecodeError:
        return ""


def _peek_kind(body: bytes) -> str:
    return "status" if b"StatusCode>" in body[:1_000_000] else ("edoc" if b"edXML" in body[:4096] else "unknown")


def load_trust(settings: Settings, crl_path: Path | None = None) -> Trust:
    """The CA and revocations this process trusts (``crl_path``: a CRL file, default the CA's)."""
    from signing import crl
    from signing.ca import CertificateAuthority

    ca = CertificateAuthority.load(settings.home, need_key=False)
    revoked = crl.read(crl_path or settings.home / "ca" / "crl.pem", ca.cert)
    return Trust(ca=ca, hub_organ_id=settings.hub_organ_id, revoked_serials=revoked, limits=settings.limits)
