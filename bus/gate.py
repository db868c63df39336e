"""The gate: every check that decides whether a submission is accepted, without side effects.

The router runs it on each submission; ``docbus verify`` runs the same checks on files, so
both refuse with the same reason.  In order: :func:`bus.envelope.open_envelope` (parse,
signature present, strict XSD, manifest, CA, XMLDSig, From = certificate), the three
proofs of identity, the registry (enabled agency, current certificate, revocations),
freshness (replay window, clock skew) and the directive's policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace

from peewee import JOIN

from bus import edxml, statements
from bus.archive import Message, Recipient
from bus.config import Settings
from bus.edxml import Edoc
from bus.envelope import Opened, Trust, open_envelope
from bus.errors import PolicyRefusal, SignatureRejected
from bus.policy import check_edoc, check_lifecycle, check_status
from bus.registry import Registry

DEV_USER = "guest"  # RabbitMQ's local development user; never an agency


class Gate:
    def __init__(self, settings: Settings, trust: Trust, registry: Registry | None = None) -> None:
        self.settings = settings
        self.trust = trust
        self.registry = registry or Registry()

    def check(
        self,
        body: bytes,
        *,
        claimed: str | None,
        user_id: str | None = None,
        at: dt.datetime | None = None,
        from_hub: bool = False,
        fresh: bool = True,
        earlier: Mapping[tuple[str, str], set[str]] | None = None,
    ) -> Opened:
        """Verify ``body`` completely or raise :class:`bus.errors.Refused`.

        ``claimed``: the OrganId in the routing key (None for a file, which has none);
        ``at``: the time certificates must be valid at (now by default);
        ``fresh``: apply the replay window (off when checking an archived file years later);
        ``earlier``: recipients of edocs accepted earlier in the same batch but not yet
        archived, by (DocumentId, sender), so a revocation or status right behind its
        document is judged as if the document were already archived.
        """
        snapshot = self.registry.snapshot()
        trust = replace(self.trust, revoked_serials=self.trust.revoked_serials | snapshot.revoked)
        opened = open_envelope(body, trust, at=at, from_hub=from_hub)
        signer = opened.signer
        if claimed is not None:
            # one identity, three proofs: routing key (topic permission), broker user, certificate
            if claimed != signer:
                raise SignatureRejected(
                    f"routing key names {claimed or 'nobody'} but the envelope is signed by {signer}",
                    reason="sender-mismatch",
                )
            own_user = snapshot.broker_users.get(signer)
            # an agency with its own broker user must use it; others only the development user
            allowed = {own_user} if own_user else {None, DEV_USER, signer}
            if user_id not in allowed:
                raise SignatureRejected(f"broker user {user_id} may not submit for {signer}", reason="sender-mismatch")
        try:  # the envelope verified: a refusal from here on may keep its header
            if signer != self.settings.hub_organ_id:
                snapshot.check_sender(signer, opened.certificate)
            if fresh:
                self._check_fresh(opened.message, at)
            msg = opened.message
            if isinstance(msg, Edoc):
                check_edoc(msg, snapshot.enabled)
                check_lifecycle(msg, lambda doc: recipients_of(doc, signer, earlier))
            elif signer != self.settings.hub_organ_id:
                edoc_sender = msg.response_for.organ_id
                recips = recipients_of(msg.document_id, edoc_sender, earlier)
                check_status(msg, recips, edoc_sender if recips is not None else None)
        except PolicyRefusal as exc:
            exc.verified = opened.message
            raise
        return opened

    def _check_fresh(self, msg: edxml.Message, at: dt.datetime | None) -> None:
        """Refuse a message signed too long ago (replay window) or in the future (clock skew)."""
        limits = self.settings.limits
        signed_at = edxml.parse_timestamp(msg.traces[0].timestamp) if msg.traces else None
        if signed_at is None:
            raise PolicyRefusal("the sender's TraceHeader has no valid Timestamp", reason="no-timestamp")
        now = at or dt.datetime.now(dt.UTC)
        if now - signed_at > dt.timedelta(hours=limits.max_age_hours):
            raise PolicyRefusal(
                f"signed at {msg.traces[0].timestamp}, older than the {limits.max_age_hours:g} h window", reason="stale"
            )
        if signed_at - now > dt.timedelta(minutes=limits.max_clock_skew_minutes):
            raise PolicyRefusal(f"signed at {msg.traces[0].timestamp}, in the future", reason="clock-skew")


def recipients_of(
    document_id: str, sender: str, earlier: Mapping[tuple[str, str], set[str]] | None = None
) -> set[str] | None:
    """Recipients of every accepted edoc ``document_id`` from ``sender`` (None if there is none).

    ``earlier``: see :meth:`Gate.check`.
    """
    pending = (earlier or {}).get((document_id, sender))
    archived = _archived_recipients_of(document_id, sender)
    if pending is None:
        return archived
    return pending | (archived or set())


def _archived_recipients_of(document_id: str, sender: str) -> set[str] | None:
    # only the DocumentId in SQL: given the other conditions too, SQLite without statistics
    # walks an index of every accepted edoc instead of the DocumentId's
    rows = statements.rows(
        Message,
        "recipients-of",
        [document_id],
        lambda v: (
            Message.select(Message.kind, Message.state, Message.sender, Recipient.organ_id)
            .join(Recipient, JOIN.LEFT_OUTER)
            .where(Message.document_id == v[0])
        ),
    ).tuples()
    found = [organ for kind, state, by, organ in rows if (kind, state, by) == ("edoc", "accepted", sender)]
    if not found:
        return None
    return {organ for organ in found if organ is not None}
