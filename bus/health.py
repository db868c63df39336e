"""The bus at a glance, for the data centre's daily check (``docbus health``).

Three questions an operator asks every morning: is a router taking submissions, has anything
been dead-lettered, and which agencies have not taken in their mail.  The directive asks
clerks to check their electronic inbox every day; an agency's adapter answers status 01 as
soon as it has stored a document, so a delivery with no 01 from its recipient after a day is
mail nobody at that agency has taken in (its adapter is not running, or the agency is not
checking).  A receipt item still kept after five minutes means no router could send it.
The broker side (queue depths, connected consumers) comes from RabbitMQ's
management API (whose queue figures are refreshed every few seconds), the rest from the
archive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peewee import fn

from bus.archive import Agency, Certificate, DeadLetter, Message, PendingReceipt, Recipient, StatusEvent, utcnow
from bus.brokeradmin import BrokerAdmin, vhost_of
from bus.edxml import vn_text
from bus.errors import NotFound
from bus.topology import Names
from signing.ca import load_cert
from signing.identity import RENEW_WITHIN_DAYS, hub_folders

ARRIVED = "01"
RECEIPTS_LATE_S = 300  # a receipt item still unsent after this long is a problem to look into


@dataclass(frozen=True)
class QueueState:
    name: str
    messages: int  # ready and handed out but not yet acked
    consumers: int


@dataclass(frozen=True)
class AgencyHealth:
    organ_id: str
    name: str
    enabled: bool
    in_inbox: int  # on its inbox queues (ordinary and urgent)
    connected: bool  # an adapter is consuming its inbox
    not_taken: int  # delivered to it, no 01 from it yet (within the window looked at)
    oldest_hours: float | None  # how long ago the oldest of those was delivered


@dataclass(frozen=True)
class Expiring:
    """A certificate the bus depends on that ends soon: an agency's, or one of the data centre's."""

    holder: str  # an OrganId, or the data centre's key ("hub signing", "hub seal")
    not_after: dt.datetime  # naive UTC
    days_left: int
    remedy: str


def expiring_certificates(home: Path, now: dt.datetime, within_days: int = RENEW_WITHIN_DAYS) -> list[Expiring]:
    """Active agency certificates and the data centre's two keys ending within ``within_days``.

    An agency whose certificate has ended can no longer send (the router refuses
    ``cert-expired``); when the data centre's ends, every adapter refuses its 02 answers
    (signing key) or every delivery (seal key).  A certificate retiring after a rotation
    ends on purpose and is not listed."""
    limit = now + dt.timedelta(days=within_days)
    out = []
    for role, folder in hub_folders(home).items():
        path = folder / "cert.pem"
        if path.exists():
            end = load_cert(path.read_bytes()).not_valid_after_utc.replace(tzinfo=None)
            if end <= limit:
                remedy = "run 'docbus init' where the CA key is (it renews it), then restart the routers"
                out.append(Expiring(f"hub {role}", end, (end - now).days, remedy))
    latest: dict[str, dt.datetime] = {}
    for organ_id, end in (
        Certificate.select(Certificate.organ_id, Certificate.not_after).where(Certificate.state == "active").tuples()
    ):
        latest[organ_id] = max(end, latest.get(organ_id, end))
    for organ_id, end in sorted(latest.items()):
        if end <= limit:
            out.append(Expiring(organ_id, end, (end - now).days, f"docbus cert rotate {organ_id}"))
    return out


@dataclass(frozen=True)
class Health:
    routers: int  # consumers on the router's ordinary queue: one per running router
    waiting_for_router: int  # submissions and statuses not yet taken by a router
    dead: int  # dead-lettered messages nobody has replayed or purged yet
    agencies: tuple[AgencyHealth, ...]
    overdue_hours: float
    expiring: tuple[Expiring, ...] = ()
    receipts_late: int = 0  # receipt items kept over RECEIPTS_LATE_S and still not sent

    def problems(self) -> list[str]:
        """What needs someone's attention, one line each; empty when all is well."""
        out = []
        if self.routers == 0:
            out.append("no router is running: nothing sent is being delivered (start 'docbus router run')")
        if self.dead:
            out.append(f"{self.dead} dead-lettered message(s) waiting for a decision ('docbus dead list')")
        if self.receipts_late:
            out.append(
                f"{self.receipts_late} receipt(s) not yet sent to their senders after {RECEIPTS_LATE_S // 60} min:"
                " is a router running, and can it reach the broker? (its log says why)"
            )
        for a in self.agencies:
            if a.enabled and a.oldest_hours is not None and a.oldest_hours >= self.overdue_hours:
                out.append(
                    f"{a.organ_id} ({a.name}) has not taken in {a.not_taken} document(s), the oldest delivered "
                    f"{a.oldest_hours:.0f} h ago" + ("" if a.connected else "; no adapter is connected")
                )
        for e in self.expiring:
            when = "ended" if e.not_after <= utcnow() else f"ends in {e.days_left} day(s)"
            whose = f"the data centre's {e.holder[4:]}" if e.holder.startswith("hub ") else f"{e.holder}'s"
            out.append(f"{whose} certificate {when} ({vn_text(e.not_after)[:16]} UTC+7): {e.remedy}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"problems": self.problems()}


def queue_states(admin: BrokerAdmin, amqp_url: str, names: Names) -> dict[str, QueueState]:
    """Every queue of this bus (its namespace) on the broker, by name: one management API call."""
    vhost = quote(vhost_of(amqp_url), safe="")
    found = admin.get(f"/queues/{vhost}?columns=name,messages_ready,messages_unacknowledged,consumers") or []
    prefix = names.namespace + "."
    return {
        q["name"]: QueueState(
            q["name"],
            int(q.get("messages_ready") or 0) + int(q.get("messages_unacknowledged") or 0),
            int(q.get("consumers") or 0),
        )
        for q in found
        if q.get("name", "").startswith(prefix)
    }


def not_taken_in(since: dt.datetime) -> dict[str, tuple[int, dt.datetime]]:
    """Per recipient: documents delivered to it (archived since ``since``) that it has not
    answered with 01, and the earliest delivery among them (naive UTC)."""
    answered = StatusEvent.select(StatusEvent.id).where(
        (StatusEvent.document_id == Message.document_id)
        & (StatusEvent.edoc_sender == Message.sender)
        & (StatusEvent.organ_id == Recipient.organ_id)
        & (StatusEvent.status_code == ARRIVED)
    )
    rows = (
        Recipient.select(Recipient.organ_id, fn.COUNT(Recipient.id), fn.MIN(Recipient.delivered_at))
        .join(Message)
        .where(
            (Message.received_at >= since)
            & (Message.kind == "edoc")
            & Recipient.delivered_at.is_null(False)
            & ~fn.EXISTS(answered)
        )
        .group_by(Recipient.organ_id)
        .tuples()
    )
    return {organ: (count, _as_datetime(oldest)) for organ, count, oldest in rows}


def check(
    admin: BrokerAdmin,
    amqp_url: str,
    names: Names,
    *,
    overdue_hours: float = 24,
    days: int = 30,
    home: Path | None = None,
) -> Health:
    """The bus as it is now; deliveries older than ``days`` are not looked at.  ``home``: the
    data centre's $DOCBUS_HOME, whose keys' certificates are checked with the agencies'."""
    queues = queue_states(admin, amqp_url, names)
    if names.router_queue not in queues:
        raise NotFound(f"no bus '{names.namespace}' on this broker (no queue {names.router_queue}): run 'docbus init'")
    now = utcnow()
    waiting = not_taken_in(now - dt.timedelta(days=days))
    agencies = []
    for organ_id, name, enabled in (
        Agency.select(Agency.organ_id, Agency.name, Agency.enabled).order_by(Agency.organ_id).tuples()
    ):
        inbox = [queues.get(q) for q in names.inboxes(organ_id)]
        count, oldest = waiting.get(organ_id, (0, None))
        agencies.append(
            AgencyHealth(
                organ_id,
                name,
                bool(enabled),
                in_inbox=sum(q.messages for q in inbox if q is not None),
                connected=any(q.consumers for q in inbox if q is not None),
                not_taken=count,
                oldest_hours=round((now - oldest).total_seconds() / 3600, 1) if oldest is not None else None,
            )
        )
    routed = (names.router_urgent, names.router_queue, names.router_status)
    return Health(
        routers=running_routers(amqp_url, names),
        waiting_for_router=_total(queues.get(q) for q in routed),
        dead=_total([queues.get(names.dead)]) + DeadLetter.select().where(DeadLetter.replayed_at.is_null()).count(),
        agencies=tuple(agencies),
        overdue_hours=overdue_hours,
        expiring=tuple(expiring_certificates(home, now)) if home is not None else (),
        receipts_late=late_receipts(now),
    )


def late_receipts(now: dt.datetime) -> int:
    """Receipt items (archive.PendingReceipt) kept longer than RECEIPTS_LATE_S: a running
    router sends its own every second and takes over a stopped one's within 15 s."""
    late = PendingReceipt.written_at < now - dt.timedelta(seconds=RECEIPTS_LATE_S)
    return PendingReceipt.select().where(late).count()


def running_routers(amqp_url: str, names: Names) -> int:
    """Routers consuming now, asked of the router queue itself: the management statistics
    would still count one that stopped a few seconds ago."""
    from bus.transport import AmqpTransport

    t = AmqpTransport(amqp_url)
    try:
        return t.consumers(names.router_queue)
    finally:
        t.close()


def _total(states: Iterable[QueueState | None]) -> int:
    return sum(s.messages for s in states if s is not None)


def _as_datetime(value: Any) -> dt.datetime:
    """MIN() over a date column: a datetime on PostgreSQL, the stored text on SQLite."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    return dt.datetime.fromisoformat(str(value))
