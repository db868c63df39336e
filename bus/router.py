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

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bus import compose, edxml
from bus.archive import Archive, Message, Recipient, sha256
from bus.config import Settings
from bus.edxml import Edoc, Organ, Status
from bus.envelope import Opened, Trust, append_hub_trace, open_envelope
from bus.errors import BrokerUnavailable, PolicyRefusal, Refused, SignatureRejected
from bus.policy import check_edoc, check_status
from bus.topology import Names
from bus.transport import Delivery, DeliveryFailed, Transport
from signing.identity import Identity

log = logging.getLogger("docbus.router")


@dataclass
class Outcome:
    state: str  # accepted | quarantined | duplicate
    digest: str
    reason: str | None = None
    detail: str | None = None


class Router:
    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        archive: Archive,
        trust: Trust,
        hub: Identity,
        *,
        dev_users: frozenset[str] = frozenset({"guest"}),
    ) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.transport = transport
        self.archive = archive
        self.trust = trust
        self.hub = hub
        # Broker users that are not agencies (the local development user): their messages are
        # bound by routing key and certificate only.  Production brokers have no such user.
        self.dev_users = dev_users
        self.processed = 0

    # -- the AMQP side
    def handle(self, delivery: Delivery) -> None:
        try:
            self.process(delivery.body, routing_key=delivery.routing_key, user_id=delivery.user_id)
        except BrokerUnavailable:
            raise
        except DeliveryFailed as exc:
            log.error("delivery failed, will retry: %s", exc)
            delivery.reject(requeue=True)
        except Exception:
            # An unexpected error: the quorum queue's delivery limit dead-letters the
            # message after a bounded number of attempts; the router goes on.
            log.exception("router crashed on a submission (routing key %s)", delivery.routing_key)
            delivery.reject(requeue=True)
        else:
            delivery.ack()
            self.processed += 1

    def run(
        self, *, idle_timeout: float | None = None, stop: Callable[[], bool] | None = None, prefetch: int = 20
    ) -> None:
        self.transport.consume(
            self.names.router_queue, self.handle, prefetch=prefetch, idle_timeout=idle_timeout, stop=stop
        )

    # -- the work
    def process(self, body: bytes, *, routing_key: str, user_id: str | None = None) -> Outcome:
        digest = sha256(body)
        existing = Message.get_or_none(Message.digest == digest)
        if existing is not None:
            self._deliver(existing, body)
            return Outcome("duplicate", digest, existing.reason)
        claimed = routing_key.split(".", 1)[1] if "." in routing_key else ""
        try:
            opened = open_envelope(body, self.trust)
            self._bind_identity(opened, claimed, user_id)
            msg = opened.message
            if isinstance(msg, Edoc):
                check_edoc(msg, self.archive.known_agencies())
                record, _ = self.archive.record(
                    body, fields=self._fields(msg, user_id), recipients=[r.organ_id for r in msg.recipients]
                )
            else:
                edoc = Message.get_or_none(
                    (Message.document_id == msg.document_id)
                    & (Message.kind == "edoc")
                    & (Message.state == "accepted")
                    & (Message.sender == msg.response_for.organ_id)
                )
                recips = {r.organ_id for r in Recipient.select().where(Recipient.message == edoc)} if edoc else None
                check_status(msg, recips, edoc.sender if edoc else None)
                record, _ = self.archive.record(
                    body,
                    fields=self._fields(msg, user_id),
                    recipients=[msg.response_for.organ_id],
                    status=self._status_event(msg),
                )
        except Refused as exc:
            self._quarantine(body, exc, claimed, user_id)
            return Outcome("quarantined", digest, exc.reason, exc.message)
        self._deliver(record, body)
        return Outcome("accepted", digest)

    def _bind_identity(self, opened: Opened, claimed: str, user_id: str | None) -> None:
        """The three proofs agree: broker user, routing key (topic permission), certificate."""
        signer = opened.signer
        if claimed != signer:
            raise SignatureRejected(
                f"routing key names {claimed or 'nobody'} but the envelope is signed by {signer}",
                reason="sender-mismatch",
            )
        if user_id and user_id not in self.dev_users and user_id != signer:
            raise SignatureRejected(f"broker user {user_id} may not submit for {signer}", reason="sender-mismatch")
        agency = self.archive.known_agencies().get(signer)
        if agency is None:
            raise PolicyRefusal(f"{signer} is not a registered, enabled agency", reason="unknown-sender")
        if agency.cert_serial != format(opened.certificate.serial_number, "x"):
            raise SignatureRejected(
                f"certificate {opened.certificate.serial_number:x} is not the one registered for {signer}",
                reason="cert-not-registered",
            )

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
        for organ_id in pending:
            self.transport.publish(self.names.deliver, organ_id, out, message_id=record.digest, headers=headers)
            self.archive.mark_delivered(record, [organ_id])

    def _quarantine(self, body: bytes, exc: Refused, claimed: str, user_id: str | None) -> None:
        """Keep the refused bytes with the reason and tell the sender with a status 02."""
        document_id = _peek_document_id(body) or f"sha256:{sha256(body)}"
        log.warning("refused %s from %s: %s (%s)", document_id, claimed or user_id, exc.reason, exc.message)
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
        )
        if claimed not in self.archive.known_agencies():
            return  # nobody to answer: the claimed sender is unknown; the refusal stays in quarantine
        status = compose.new_status(
            Organ(self.hub.organ_id, self.hub.name),
            edoc_sender=claimed,
            document_id=document_id,
            code="02",
            description=f"[{exc.reason}] {exc.message}"[:2000],
        )
        raw = compose.sign(status, self.hub)
        record, _ = self.archive.record(
            raw,
            fields=self._fields(status, None) | {"reason": exc.reason},
            recipients=[claimed],
            status=self._status_event(status),
        )
        self._deliver(record, raw)


def _peek_document_id(body: bytes) -> str:
    """Best-effort DocumentId of a refused message, for the answer only (never trusted)."""
    for tag in (b"DocumentId>",):
        i = body.find(tag)
        if 0 <= i < 1_000_000:
            j = body.find(b"<", i + len(tag))
            if j > i:
                try:
                    return body[i + len(tag) : j].decode("utf-8").strip()[:300]
                except UnicodeDecodeError:
                    return ""
    return ""


def _peek_kind(body: bytes) -> str:
    return "status" if b"StatusCode>" in body[:1_000_000] else ("edoc" if b"edXML" in body[:4096] else "unknown")


def load_trust(settings: Settings, archive: Archive | None = None) -> Trust:
    from signing.ca import CertificateAuthority

    return Trust(
        ca=CertificateAuthority.load(settings.home, need_key=False),
        hub_organ_id=settings.hub_organ_id,
        limits=settings.limits,
    )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
