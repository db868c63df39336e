"""Small builders shared by the tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from bus import compose
from bus.brokeradmin import agency_url
from bus.config import Settings
from bus.edxml import Attachment, Organ
from bus.transport import AmqpTransport, Delivery
from signing.identity import Identity, hub_folders

PDF = b"%PDF-1.4\n% docbus test\n%%EOF\n"


def identity(settings: Settings, organ_id: str) -> Identity:
    return Identity.load(organ_id, settings.agency_home(organ_id))


def hub_seal(settings: Settings) -> Identity:
    """The key the router seals its TraceHeaders with (signing.seal)."""
    return Identity.load(settings.hub_organ_id, hub_folders(settings.home)["seal"])


def edoc(
    sender: str,
    recipients: list[str],
    *,
    subject: str = "Công văn V/v kết nối",
    number: str = "12",
    files: bool = True,
    zipped: bool = False,
    **kw,
):
    atts = [Attachment.from_bytes("cong-van.pdf", PDF, "application/pdf", zipped=zipped)] if files else []
    return compose.new_edoc(
        Organ(sender, "Sở"),
        [Organ(r) for r in recipients],
        subject=subject,
        number=number,
        notation="SNV-VP",
        attachments=atts,
        **kw,
    )


def signed_edoc(settings: Settings, sender: str, recipients: list[str], *, signer: str | None = None, **kw) -> bytes:
    return compose.sign(edoc(sender, recipients, **kw), identity(settings, signer or sender))


def receive_until(adapter, count: int, timeout: float = 30.0) -> list:
    """Let ``adapter`` take deliveries until it has ``count`` of them (or ``timeout`` passes)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += adapter.receive(idle_timeout=0.3)
    return got


def connect_as(p, organ: str) -> AmqpTransport:
    """A connection with ``organ``'s own broker user, as its adapter would open."""
    creds = json.loads((p.settings.agency_home(organ) / "broker.json").read_text())
    return AmqpTransport(agency_url(p.settings.amqp_url, creds["user"], creds["password"]))


def user_of(p, organ: str) -> str:
    return json.loads((p.settings.agency_home(organ) / "broker.json").read_text())["user"]


def alter_first_byte(path) -> None:
    """Change a file's first byte, whatever it was (writing a fixed byte leaves one file in 256
    of random data as it was)."""
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])


def router_batches(
    p, *, max_batch: int, after_batch: Callable[[list[list[str]]], None] | None = None, idle_timeout: float = 2.0
) -> list[list[str]]:
    """Run a router of province ``p`` on the real broker until nothing comes for ``idle_timeout``
    s; the routing keys of each batch it took, in order.  ``after_batch(batches)`` is called
    after each batch is handled (to send something while the router is busy)."""
    from bus.router import Router, load_trust

    transport = AmqpTransport(p.settings.amqp_url)
    router = Router(p.settings, transport, p.archive, load_trust(p.settings), p.hub)
    batches: list[list[str]] = []
    handle = router.handle_batch

    def recording(deliveries: list[Delivery]) -> None:
        batches.append([d.routing_key for d in deliveries])
        handle(deliveries)
        if after_batch is not None:
            after_batch(batches)

    router.handle_batch = recording  # type: ignore[method-assign]
    try:
        router.run(idle_timeout=idle_timeout, max_batch=max_batch)
    finally:
        transport.close()
    return batches


def inbox_mail(p, organ: str) -> list[Delivery]:
    """What waits in ``organ``'s inbox on the in-memory transport, the data centre's receipts left out."""
    from bus.receipt import KIND
    from bus.topology import Names

    queue = p.transport.queues[Names(p.settings.namespace).inbox(organ)]
    return [d for d in queue if d.headers.get("x-docbus-kind") != KIND]


def receipts_for(p, organ: str) -> list:
    """The data centre's receipts waiting in ``organ``'s inbox (in-memory transport), read."""
    from bus import receipt
    from bus.topology import Names

    queue = p.transport.queues[Names(p.settings.namespace).inbox(organ)]
    return [receipt.read(d.body) for d in queue if d.headers.get("x-docbus-kind") == receipt.KIND]
