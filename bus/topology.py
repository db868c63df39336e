"""The broker topology, declared as data and applied idempotently.

::

    agency adapter --(user_id, key edoc.<OrganId> | status.<OrganId>)--> <ns>.submit (topic)
        <ns>.submit --#--> <ns>.router (quorum; delivery limit; dead-letters to <ns>.dead)
    router --(key <OrganId>)--> <ns>.deliver (direct) --> <ns>.inbox.<OrganId> (quorum)
    <ns>.dead (fanout) --> <ns>.dead (quorum): poison messages, never silently dropped

``<ns>`` is ``docbus`` in production (``DOCBUS_NAMESPACE``); tests use their own so they
can run beside a live bus on one vhost.  Re-applying a topology is a no-op; a queue that
exists with other arguments is reported, not replaced.
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

    def __add__(self, other: Topology) -> Topology:
        return Topology(self.exchanges + other.exchanges, self.queues + other.queues, self.bindings + other.bindings)


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
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    def inbox(self, organ_id: str) -> str:
        return f"{self.namespace}.inbox.{organ_id}"

    @staticmethod
    def submit_key(kind: str, organ_id: str) -> str:
        return f"{kind}.{organ_id}"


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
        queues=(Queue(names.router_queue, _quorum(names.dead)), Queue(names.dead, _quorum(None))),
        bindings=(Binding(names.submit, names.router_queue, "#"), Binding(names.dead, names.dead, "")),
    )


def agency(names: Names, organ_id: str) -> Topology:
    """One agency's inbox: a quorum queue bound to the delivery exchange by its OrganId."""
    inbox = names.inbox(organ_id)
    return Topology(queues=(Queue(inbox, _quorum(names.dead)),), bindings=(Binding(names.deliver, inbox, organ_id),))
