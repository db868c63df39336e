"""The broker topology, declared as data and applied idempotently.

::

    agency adapter --(user_id, key [urgent.]edoc.<OrganId> | status.<OrganId>)--> <ns>.submit (topic)
        <ns>.submit --edoc.#----------> <ns>.router        (quorum; delivery limit; DLX <ns>.dead)
        <ns>.submit --urgent.#--------> <ns>.router.urgent (same, consumed first)
        <ns>.submit --status.#--------> <ns>.router.status (same, consumed last, a few per batch)
    router --(key <OrganId>[.urgent])--> <ns>.deliver (direct)
        --> <ns>.inbox.<OrganId> and <ns>.inbox.<OrganId>.urgent (quorum; the adapter reads urgent first)
    <ns>.dead (fanout) --> <ns>.dead (quorum): poison messages, never silently dropped

Quorum queues in RabbitMQ 3.10 have no priorities, so hỏa tốc documents (priority 3-4) travel
in queues of their own, and every consumer drains the urgent queue before the ordinary one.
Statuses have a queue of their own for the same reason: a recipient answers its 01s in
bursts, and documents must not wait behind a burst of receipts.

``<ns>`` is ``docbus`` in production (``DOCBUS_NAMESPACE``); tests use their own so they
can run beside a live bus on one vhost.  Re-applying a topology is a no-op; a queue that
exists with other arguments is reported, not replaced; a binding an earlier version made and
this one no longer wants is listed in ``Topology.retired`` and removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str  # topic | direct | fanout


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, object] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[Queue, ...] = ()
    bindings: tuple[Binding, ...] = ()
    retired: tuple[Binding, ...] = ()  # made by an earlier version; applying removes them

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            self.exchanges + other.exchanges,
            self.queues + other.queues,
            self.bindings + other.bindings,
            self.retired + other.retired,
        )


@dataclass(frozen=True)
class Names:
    """Every name on the broker, derived from one namespace."""

    namespace: str = "docbus"

    @property
    def submit(self) -> str:
        return f"{self.namespace}.submit"

    @property
    def deliver(self) -> str:
        return f"{self.namespace}.deliver"

    @property
    def router_queue(self) -> str:
        return f"{self.namespace}.router"

    @property
    def router_urgent(self) -> str:
        return f"{self.namespace}.router.urgent"

    @property
    def router_status(self) -> str:
        """Statuses on their way to the router: read after the documents, a few per batch."""
        return f"{self.namespace}.router.status"

    @property
    def router_chunks(self) -> str:
        """Chunks of large files on their way to the router (bus.blobs)."""
        return f"{self.namespace}.router.chunks"

    @property
    def router_wait(self) -> str:
        """Envelopes waiting a moment for their chunks; each goes back to the router queue after WAIT_MS."""
        return f"{self.namespace}.router.wait"

    @property
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    def inbox(self, organ_id: str) -> str:
        return f"{self.namespace}.inbox.{organ_id}"

    def inbox_urgent(self, organ_id: str) -> str:
        return f"{self.namespace}.inbox.{organ_id}.urgent"

    def inboxes(self, organ_id: str) -> list[str]:
        """An agency's inbox queues, in the order they are read (urgent first)."""
        return [self.inbox_urgent(organ_id), self.inbox(organ_id)]

    @staticmethod
    def submit_key(kind: str, organ_id: str, *, urgent: bool = False) -> str:
        return f"{'urgent.' if urgent else ''}{kind}.{organ_id}"

    @staticmethod
    def claimed_sender(routing_key: str) -> str:
        """The OrganId a submission's routing key names (``[urgent.]<kind>.<OrganId>``)."""
        key = routing_key.removeprefix("urgent.")
        return key.split(".", 1)[1] if "." in key else ""

    @staticmethod
    def deliver_key(organ_id: str, *, urgent: bool = False) -> str:
        return f"{organ_id}.urgent" if urgent else organ_id


URGENT_PRIORITY = 3  # hỏa tốc and hỏa tốc hẹn giờ
WAIT_MS = 1000  # how long an envelope waits for its chunks before the router looks again


def _quorum(dead_letter: str | None) -> dict[str, object]:
    args: dict[str, object] = {"x-queue-type": "quorum"}
    if dead_letter:
        args["x-delivery-limit"] = DELIVERY_LIMIT
        args["x-dead-letter-exchange"] = dead_letter
    return args


def core(names: Names) -> Topology:
    """Exchanges and queues of the bus itself (no agency yet)."""
    return Topology(
        exchanges=(Exchange(names.submit, "topic"), Exchange(names.deliver, "direct"), Exchange(names.dead, "fanout")),
        queues=(
            Queue(names.router_urgent, _quorum(names.dead)),
            Queue(names.router_queue, _quorum(names.dead)),
            Queue(names.router_status, _quorum(names.dead)),
            Queue(names.router_chunks, _quorum(names.dead)),
            Queue(
                names.router_wait,
                {
                    "x-queue-type": "classic",
                    "x-message-ttl": WAIT_MS,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": names.router_queue,
                },
            ),
            Queue(names.dead, _quorum(None)),
        ),
        bindings=(
            Binding(names.submit, names.router_urgent, "urgent.#"),
            Binding(names.submit, names.router_queue, "edoc.#"),
            Binding(names.submit, names.router_status, "status.#"),
            Binding(names.submit, names.router_chunks, "chunk.#"),
            Binding(names.dead, names.dead, ""),
        ),
        # statuses shared the documents' queue before they had their own: never both
        retired=(Binding(names.submit, names.router_queue, "status.#"),),
    )


def agency(names: Names, organ_id: str) -> Topology:
    """One agency's inboxes (urgent and ordinary), bound to the delivery exchange by its OrganId."""
    urgent, inbox = names.inbox_urgent(organ_id), names.inbox(organ_id)
    return Topology(
        queues=(Queue(urgent, _quorum(names.dead)), Queue(inbox, _quorum(names.dead))),
        bindings=(
            Binding(names.deliver, urgent, Names.deliver_key(organ_id, urgent=True)),
            Binding(names.deliver, inbox, Names.deliver_key(organ_id)),
        ),
    )
