"""The central router: validate, archive, deliver, answer.

For each submission on ``<ns>.router``::

    digest seen before? -> finish the deliveries a dead router left undone, ack
    open_envelope (parse, XSD, signature, CA)  -+
    routing key / broker user / certificate agree |-> refused: quarantine + status 02 to sender
    sender registered, policy (bus.policy)        -+
    archive (one transaction) -> append hub TraceHeader -> publish to each inbox, confirmed
    -> mark delivered, keep the sender's receipt item -> ack
    (every second: send the kept receipt items, one receipt per sender)

Nothing is acked before it is archived and every delivery is confirmed, so a router killed
at any point loses nothing: the broker redelivers, and the digest makes the rest idempotent.
Routers are stateless; run as many as needed on the same queue.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peewee import OperationalError

from bus import compose, edxml, receipt, search, statements
from bus.archive import Archive, AttachmentRecord, Delivered, Entry, Message, sha256, utcnow
from bus.blobs import AttachmentIncomplete, ChunkStore, External, chunk_headers, is_chunk, read_chunks
from bus.config import Settings
from bus.deadletter import REPLAY_KEY, REPLAY_USER, record_failure
from bus.edxml import Edoc, Organ, Status
from bus.envelope import Opened, Relay, Trust, peek_document_id, peek_kind, relay
from bus.errors import BrokerUnavailable, PolicyRefusal, Refused
from bus.gate import Gate, recipients_of
from bus.policy import related_document_ids
from bus.topology import URGENT_PRIORITY, Names, core
from bus.transport import Delivery, DeliveryFailed, Outgoing, Transport
from signing import xmldsig
from signing.identity import Identity, hub_folders

log = logging.getLogger("docbus.router")
RECALL_REQUEST = "13"
# statuses in one batch, at most, or as many as the documents in it if that is more: a status
# takes about a millisecond, and the documents that arrive meanwhile wait for the batch to
# end (docs/performance-history.md, step 8); yet every document brings a 01 back, so under
# load the statuses keep pace with the documents instead of falling ever further behind
STATUS_SHARE = 4
# and held, at most: RabbitMQ 3.10 counts every held delivery a router dies with toward the
# queue's delivery limit, so statuses waiting their turn are not held by the hundred.  A
# batch's statuses stay unacked until the next batch's commit, and the broker replaces acked
# ones only after it has settled them: with room for only two shares, every other batch
# found no status waiting, and at 200 documents/s the 01s fell ~90/s behind
STATUS_PREFETCH = 32
SUMMARY_SECONDS = 60.0  # how often `docbus router run` says what it did
CHUNK_PREFETCH = 8  # chunks are up to 1 MiB: this bounds what a router holds of them
CHUNK_WAIT_SECONDS = 600.0  # an envelope waits this long for its chunks, then is refused
WAITING_SINCE = "x-docbus-waiting-since"
CHUNK_WINDOW = 8  # unconfirmed chunks in flight while a large file is delivered
TRANSIENT_RETRIES = 5
QUARANTINE_HEAD = 64 * 1024  # bytes kept of a refusal over the size limit
RECEIPT_HEADERS = {"x-docbus-kind": receipt.KIND}
# Receipt items wait in the archive (archive.PendingReceipt, written with the marks of the
# deliveries they answer, so a document is acked without waiting for its receipt), and
# each router sends its own this often, one receipt per sender: at a steady 200
# documents/s a receipt per batch would be a quorum-queue message per document, and with
# many senders' documents waiting at once nearly as many
RECEIPT_EVERY_S = 1.0
# ... or, when the bus goes quiet, at once if this router kept new items, but not more often
# than this: a clerk sending a document now and then has its receipt within a moment
RECEIPT_QUIET_S = 0.1
RECEIPT_ROWS = 5_000  # items read from the archive per round
RECEIPT_MAX_ITEMS = 1_000  # items per receipt: ~300 KB, well within receipt.MAX_BYTES
# another router's items still unsent after this long: it stopped or died before sending
# them, and this router takes them over (a live one sends its own within RECEIPT_EVERY_S)
ORPHAN_AFTER_S = 15.0


@dataclass
class Outcome:
    state: str  # accepted | quarantined | duplicate | retry (a delivery failed; the broker redelivers)
    digest: str
    reason: str | None = None
    detail: str | None = None
    error: DeliveryFailed | None = None


@dataclass
class Submission:
    """One message taken from the router queue, with what the broker says of it."""

    body: bytes
    routing_key: str
    user_id: str | None = None
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = sha256(self.body)

    @property
    def claimed(self) -> str:
        return Names.claimed_sender(self.routing_key)


@dataclass
class _Batch:
    """What one batch decides, before it is written and delivered."""

    outcomes: list[Outcome | None]
    entries: list[Entry] = field(default_factory=list)
    owners: list[int | None] = field(default_factory=list)  # entry -> submission whose delivery it is
    deliver: list[tuple[int | None, Message, bytes]] = field(default_factory=list)
    earlier: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # accepted in this batch
    contents: set[tuple[str, str, str]] = field(default_factory=set)  # (content digest, sender, DocumentId)
    fresh: dict[int, Entry] = field(default_factory=dict)  # record id -> entry, archived by this batch

    def add(self, entry: Entry, owner: int | None) -> None:
        self.entries.append(entry)
        self.owners.append(owner)


class Router:
    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        archive: Archive,
        trust: Trust,
        hub: Identity,
        seal: Identity | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.transport = transport
        self.archive = archive
        self.trust = trust
        self.hub = hub  # signs the hub's own edXML answers (the 02s)
        # seals the TraceHeader appended to every delivery (signing.seal)
        self.seal = seal or Identity.load(hub.organ_id, hub_folders(settings.home)["seal"], set_up_by="docbus init")
        self.seal_certificate = xmldsig.certificate_text(self.seal.cert_pem)  # in every receipt
        self.gate = Gate(settings, trust)
        self.registry = self.gate.registry
        self.chunks = ChunkStore(settings.home / "blobs")
        self.processed = 0
        self.tally: Counter[str] = Counter()  # outcomes since the start, by state
        # called with one line about the last minute's outcomes, when there were any (the CLI
        # prints it: an operator watching `docbus router run` or its journal sees the bus move)
        self.on_summary: Callable[[str], None] | None = None
        self._window: Counter[str] = Counter()
        self._window_start = time.monotonic()
        # deliveries the broker confirmed, marked in the archive with the next batch's
        # transaction (one commit per batch instead of two), and the submissions whose ack
        # waits for that: "acked" still means "archived, delivered, marked, receipt kept"
        self._unmarked: list[Delivered] = []
        self._held: list[Delivery] = []
        # whose receipt items in the archive this router sends (send_receipts)
        self.router_id = secrets.token_hex(8)
        self._receipts_looked = time.monotonic()
        self._kept_new = False  # receipt items committed since the last round

    # -- the AMQP side
    def submission(self, delivery: Delivery) -> Submission:
        routing_key, user_id = delivery.routing_key, delivery.user_id
        if routing_key in (
            self.names.router_queue,
            self.names.router_urgent,
            self.names.router_status,
            self.names.router_wait,
        ):
            # replayed by an operator through the default exchange, which no agency may write to
            routing_key = str(delivery.headers.get(REPLAY_KEY, ""))
            user_id = delivery.headers.get(REPLAY_USER) or None
            headers = delivery.headers
        else:  # from an agency: since when it waited for its chunks is the router's to say
            headers = delivery.headers
            if headers and WAITING_SINCE in headers:  # copied only then: this runs for every submission
                headers = {k: v for k, v in headers.items() if k != WAITING_SINCE}
        return Submission(delivery.body, routing_key, user_id, delivery.redelivered, headers)

    def handle(self, delivery: Delivery) -> None:
        self.handle_batch([delivery])

    def handle_batch(self, deliveries: list[Delivery]) -> None:
        """Process what arrived together, then ack each delivery, or requeue it to retry.

        An unexpected error in a batch of several is retried one by one, so one poison
        message costs only its own delivery attempts: the quorum queue's delivery limit
        dead-letters it after a bounded number, and the router goes on.
        """
        subs = [self.submission(d) for d in deliveries]
        try:
            outcomes = self._process_retrying(subs, defer=True)
        except BrokerUnavailable:
            raise
        except Exception as exc:
            if len(deliveries) > 1:
                log.warning("a batch of %d failed (%s); taking them one by one", len(deliveries), exc)
                for d in deliveries:
                    self.handle_batch([d])
                return
            log.exception("router failed on a submission (routing key %s)", deliveries[0].routing_key)
            record_failure(subs[0].digest, subs[0].routing_key, f"{type(exc).__name__}: {exc}")
            deliveries[0].reject(requeue=True)
            return
        self._ack_held()  # their marks were committed with this batch
        self._count(outcomes)
        for d, out in zip(deliveries, outcomes, strict=True):
            if out.state == "retry":
                log.error("delivery failed, will retry: %s", out.error)
                d.reject(requeue=True)
            elif self._unmarked:
                self._held.append(d)
            else:
                d.ack()
                self.processed += 1
        if self._receipts_due():
            self.send_receipts()

    def _count(self, outcomes: list[Outcome]) -> None:
        for out in outcomes:
            self._window[out.state] += 1
        now = time.monotonic()
        if now - self._window_start >= SUMMARY_SECONDS:
            self.summarize(now)

    def summarize(self, now: float | None = None) -> None:
        """Hand :attr:`on_summary` one line about the outcomes since the last one, if any."""
        now = time.monotonic() if now is None else now
        if self._window and self.on_summary is not None:
            self.on_summary(f"last {now - self._window_start:.0f} s: {describe_outcomes(self._window)}")
        self.tally.update(self._window)
        self._window.clear()
        self._window_start = now

    def settle(self, *, final: bool = False) -> None:
        """Mark the confirmed deliveries (keeping their receipts), ack what waited for that,
        and send the receipts kept (all of this router's when ``final``): the bus is quiet.

        A busy or unreachable archive leaves it all for the next batch or quiet moment."""
        if self._unmarked:
            try:
                self.archive.record_many([], delivered=self._unmarked)
            except OperationalError as exc:
                log.warning("archive busy or unreachable (%s), marking deliveries later", exc)
                return
            self._kept(self._unmarked)
            self._unmarked = []
        self._ack_held()
        quiet_round = self._kept_new and time.monotonic() - self._receipts_looked >= RECEIPT_QUIET_S
        if final or quiet_round or self._receipts_due():
            while self.send_receipts() == RECEIPT_ROWS:  # a backlog: all of it, while it goes
                pass

    def _receipts_due(self) -> bool:
        return time.monotonic() - self._receipts_looked >= RECEIPT_EVERY_S

    def _kept(self, marks: list[Delivered]) -> None:
        """``marks`` are committed: note whether they kept receipt items to send."""
        self._kept_new = self._kept_new or any(d.receipts for d in marks)

    def send_receipts(self) -> int:
        """Send the receipt items this router keeps in the archive, one receipt per sender,
        and forget them; returns how many it sent and forgot (RECEIPT_ROWS at most).

        Items a stopped router left (ORPHAN_AFTER_S old) are taken over first.  An item
        whose receipt the broker refused stays for the next round; one for a sender without
        an inbox is dropped with a warning (its document stays archived and delivered:
        ``docbus trace`` shows it).  A busy archive leaves everything for the next round;
        one that fails between sending and forgetting makes the next round send the same
        items again, which a sender's adapter takes as the no-op it is."""
        self._receipts_looked = time.monotonic()
        self._kept_new = False
        try:
            self.archive.adopt_receipts(self.router_id, utcnow() - dt.timedelta(seconds=ORPHAN_AFTER_S))
            due = self.archive.receipts_to_send(self.router_id, RECEIPT_ROWS)
        except OperationalError as exc:
            log.warning("archive busy or unreachable (%s), sending receipts later", exc)
            return 0
        if not due:
            return 0
        messages, rows = self._receipt_messages(due)
        kept: set[int] = set()
        for failure, row_ids in zip(self.transport.publish_many(messages), rows, strict=True):
            if failure is None:
                continue
            log.warning("could not deliver a receipt to a sender: %s", failure.message)
            if failure.reason != "unroutable":
                kept.update(row_ids)
        done = [row for row, _, _ in due if row not in kept]
        try:
            self.archive.receipts_sent(done)
        except OperationalError as exc:
            log.warning("archive busy or unreachable (%s), the receipts just sent may go again", exc)
            return 0
        return len(done)

    def _ack_held(self) -> None:
        for d in self._held:
            d.ack()
            self.processed += 1
        self._held.clear()

    def _process_retrying(self, subs: list[Submission], *, defer: bool = False) -> list[Outcome]:
        """A busy or briefly unreachable database is retried here: requeueing would spend the
        messages' delivery limit on a fault that is not theirs."""
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return self.process_batch(subs, defer=defer)
            except OperationalError as exc:
                log.warning("archive busy or unreachable (%s), retrying", exc)
                for s in subs:
                    s.redelivered = True  # a half-done attempt may have archived some of them
                time.sleep(0.5 * (attempt + 1))
        return self.process_batch(subs, defer=defer)

    def run(
        self,
        *,
        idle_timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
        prefetch: int = 200,
        max_batch: int = 100,
    ) -> None:
        swept = self.chunks.sweep()
        if swept:
            log.info("removed the staged chunks of %d upload(s) whose envelope never came", swept)
        # the bus's own queues as this version reads them (idempotent): a router started after
        # an upgrade brings a running bus's topology along without waiting for 'docbus init'
        self.transport.apply(core(self.names))
        self.transport.consume_batches(
            # chunks first (each is a quick write), with a small prefetch: they are 1 MiB each;
            # statuses last, a few per batch: a recipient's burst of 01s never holds up documents
            [self.names.router_chunks, self.names.router_urgent, self.names.router_queue, self.names.router_status],
            self.handle_batch,
            prefetch=[CHUNK_PREFETCH, prefetch, prefetch, STATUS_PREFETCH],
            max_batch=max_batch,
            share=[None, None, None, STATUS_SHARE],
            idle_timeout=idle_timeout,
            stop=stop,
            on_idle=self.settle,
        )
        self.settle(final=True)

    def serve(
        self,
        connect: Callable[[], Transport],
        *,
        stop: Callable[[], bool] | None = None,
        idle_exit: float | None = None,
        prefetch: int = 200,
        max_batch: int = 100,
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
                self.run(idle_timeout=idle_exit, stop=stop, prefetch=prefetch, max_batch=max_batch)
                if idle_exit is not None:
                    return
            except BrokerUnavailable as exc:
                self._held.clear()  # their channel is gone: the broker hands them out again
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
        """Check, archive, deliver one submission; raises DeliveryFailed if a delivery failed."""
        out = self.process_batch([Submission(body, routing_key, user_id, redelivered)])[0]
        if out.error is not None:
            raise out.error
        return out

    def process_batch(self, subs: list[Submission], *, defer: bool = False) -> list[Outcome]:
        """Check each submission, archive the batch in one transaction, deliver with streamed
        confirms, mark the deliveries; the outcomes are in the submissions' order.

        ``defer``: leave the marks for the next batch's transaction or :meth:`settle` (the
        consuming loop, which holds the acks until then).

        ``Submission.redelivered``: the broker's flag; a fresh copy of bytes already
        archived is a replay, a redelivered one is a router that died mid-way.  Within a
        batch, later submissions are judged as if the earlier ones were already archived.
        """
        batch = _Batch(outcomes=[None] * len(subs))
        archived = self.archive.find(s.digest for s in subs)
        first: dict[str, int] = {}
        checked: list[tuple[int, Opened]] = []
        for i, sub in enumerate(subs):
            if is_chunk(sub.headers):
                batch.outcomes[i] = self._stage_chunk(sub)
                continue
            existing = archived.get(sub.digest)
            if existing is not None:
                self._seen(batch, i, sub, existing)
                continue
            if sub.digest in first:  # the same bytes twice in one batch
                earlier = batch.outcomes[first[sub.digest]]
                if not sub.redelivered and earlier is not None and earlier.state == "accepted":
                    self._refuse_replay(batch, i, sub, "identical bytes already accepted")
                else:
                    batch.outcomes[i] = Outcome("duplicate", sub.digest, earlier.reason if earlier else None)
                continue
            first[sub.digest] = i
            try:
                opened = self.gate.check(sub.body, claimed=sub.claimed, user_id=sub.user_id, earlier=batch.earlier)
                self._accept(batch, i, sub, opened)
                checked.append((i, opened))
            except _Waiting:
                self._wait_for_chunks(sub)
                batch.outcomes[i] = Outcome("waiting", sub.digest, "attachment-incomplete")
                del first[sub.digest]
            except Refused as exc:
                self._quarantine(batch, i, sub, exc)
        self._refuse_content_replays(batch, subs, checked)
        marks, self._unmarked = self._unmarked, []
        try:  # with the marks of the batch before
            records = self.archive.record_many(batch.entries, absent=True, delivered=marks)  # looked up above
        except BaseException:
            self._unmarked = marks + self._unmarked
            raise
        self._kept(marks)
        for owner, (record, created), entry in zip(batch.owners, records, batch.entries, strict=True):
            if record.state == "accepted" and record.kind in ("edoc", "status"):
                batch.deliver.append((owner, record, entry.raw))
                if created:
                    batch.fresh[record.id] = entry
        self._deliver_all(batch, defer)
        return [
            o if o is not None else Outcome("duplicate", s.digest) for o, s in zip(batch.outcomes, subs, strict=True)
        ]

    def _seen(self, batch: _Batch, i: int, sub: Submission, existing: Message) -> None:
        """Bytes already archived: finish a dead router's deliveries, or refuse a replay."""
        if sub.redelivered or self.archive.undelivered(existing):
            batch.deliver.append((i, existing, sub.body))  # its receipt is kept with its marks
            batch.outcomes[i] = Outcome("duplicate", sub.digest, existing.reason)
        elif existing.state == "accepted":
            when = f"{edxml.vn_text(existing.received_at)} (UTC+7)"
            self._answer(
                batch,
                sub.claimed,
                existing.document_id,
                "replay",
                f"already accepted on {when}; not delivered again",
                sub.digest,
            )
            batch.outcomes[i] = Outcome("quarantined", sub.digest, "replay", "identical bytes already accepted")
        else:
            batch.outcomes[i] = Outcome("duplicate", sub.digest, existing.reason)

    def _accept(self, batch: _Batch, i: int, sub: Submission, opened: Opened) -> None:
        msg = opened.message
        content = _content_digest(opened)
        key = (content, msg.sender.organ_id, msg.document_id[:500])
        if content and key in batch.contents:
            raise PolicyRefusal(f"{msg.document_id} with this signed content was already accepted", reason="replay")
        fields = self._fields(msg, sub.user_id) | {"content_digest": content}
        if isinstance(msg, Edoc):
            self._assemble(msg, sub)
            recipients = [r.organ_id for r in msg.recipients]
            entry = Entry(sub.body, fields, recipients, attachments=msg.attachments)
            batch.earlier.setdefault((msg.document_id, msg.sender.organ_id), set()).update(recipients)
        else:
            recipients = self._status_recipients(msg, batch.earlier)
            entry = Entry(sub.body, fields, recipients, status=self._status_event(msg))
        if content:
            batch.contents.add(key)
        batch.add(entry, i)
        batch.outcomes[i] = Outcome("accepted", sub.digest)

    def _stage_chunk(self, sub: Submission) -> Outcome:
        """Keep one chunk of a large file until the envelope naming it arrives."""
        try:
            self.chunks.put(sub.claimed, sub.headers, sub.body)
        except Refused as exc:
            log.warning("dropped a chunk from %s: %s", sub.claimed or sub.user_id, exc.message)
            return Outcome("quarantined", sub.digest, exc.reason, exc.message)
        return Outcome("staged", sub.digest)

    def _assemble(self, msg: Edoc, sub: Submission) -> None:
        """Every large file the verified edoc names, assembled from its sender's chunks and checked."""
        for att in msg.attachments:
            if att.external is None:
                continue
            try:
                att.path = self.chunks.assemble(sub.claimed, att.external)
            except AttachmentIncomplete:
                if time.time() - _waiting_since(sub) < CHUNK_WAIT_SECONDS:
                    raise _Waiting from None
                raise

    def _wait_for_chunks(self, sub: Submission) -> None:
        """Park the envelope for a moment while its chunks are still on their way (the router
        reads them from their own queue; another router may hold some).  The wait queue's
        TTL sends it back to the router queue.  Republished, not requeued: a requeue would
        spend the delivery limit and spin."""
        headers = {REPLAY_KEY: sub.routing_key, REPLAY_USER: sub.user_id or "", WAITING_SINCE: _waiting_since(sub)}
        self.transport.publish("", self.names.router_wait, sub.body, message_id=sub.digest, headers=headers)

    def _refuse_content_replays(self, batch: _Batch, subs: list[Submission], checked: list[tuple[int, Opened]]) -> None:
        """Byte variants of signed content already accepted (one query for the batch)."""
        contents = {_content_digest(o) for _, o in checked} - {""}
        if not contents:
            return
        # the state is checked here, not in SQL: given "state = ?", SQLite without statistics
        # walks the state index (every accepted message) instead of the content digest's
        known = {
            (content, sender, document_id)
            for content, sender, document_id, state in statements.rows(
                Message,
                "contents",
                statements.padded(list(contents)),
                lambda v: Message.select(
                    Message.content_digest, Message.sender, Message.document_id, Message.state
                ).where(Message.content_digest.in_(v)),
            ).tuples()
            if state == "accepted"
        }
        for i, opened in checked:
            msg = opened.message
            if (_content_digest(opened), msg.sender.organ_id, msg.document_id[:500]) not in known:
                continue
            at = batch.owners.index(i)
            del batch.entries[at], batch.owners[at]
            exc = PolicyRefusal(f"{msg.document_id} with this signed content was already accepted", reason="replay")
            exc.verified = msg
            self._quarantine(batch, i, subs[i], exc)

    @staticmethod
    def _status_recipients(msg: Status, earlier: dict[tuple[str, str], set[str]]) -> list[str]:
        """A recall request (13) goes to the document's recipients; every other status to its sender."""
        if msg.status_code == RECALL_REQUEST:
            return sorted(recipients_of(msg.document_id, msg.sender.organ_id, earlier) or ())
        return [msg.response_for.organ_id]

    @staticmethod
    def _fields(msg: edxml.Message, user_id: str | None) -> dict[str, object]:
        base: dict[str, object] = {
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
                type_name=edxml.nfc(msg.type_name),  # searched exactly: one form however it was typed
                subject=edxml.nfc(msg.subject),
                promulgation_date=msg.promulgation_date,
                priority=msg.priority,
                business_doc_type=msg.business.doc_type,
                related_document_id=next(iter(related_document_ids(msg)), None),
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

    def _deliver_all(self, batch: _Batch, defer: bool = False) -> None:
        """Publish every pending delivery of the batch with streamed confirms, then mark the
        confirmed ones delivered and keep the receipt items of the documents now delivered
        to every recipient (one transaction; ``defer``: with the next batch's).  A failed
        delivery makes its submission ``retry``: the broker redelivers it and only what is
        still pending goes out again.  The chunks of a large file go to each recipient just
        ahead of its envelope, on the same queue, read from disk as they are sent."""
        # archived just now: every recipient is pending; archived before: ask the archive
        earlier = self.archive.undelivered_many(r for _, r, _ in batch.deliver if r.id not in batch.fresh)
        pending = [(row.message_id, row.organ_id) for row in earlier] + [
            (record.id, organ)
            for _, record, _ in batch.deliver
            if record.id in batch.fresh
            for organ in dict.fromkeys(batch.fresh[record.id].recipients)
        ]
        if not pending:
            return
        by_id = {record.id: (owner, record, body) for owner, record, body in batch.deliver}
        # a message archived just now names its large files in its entry; others are looked up
        maybe_files = [
            m
            for m in dict.fromkeys(m for m, _ in pending)
            if m not in batch.fresh or any(a.external is not None for a in batch.fresh[m].attachments)
        ]
        files = self._large_files(maybe_files)
        owners: list[int | None] = []  # per published item: the submission it delivers
        rows_of: list[int] = []  # ... and its recipient row
        traced: dict[int, Relay] = {}

        def outgoing() -> Iterator[Outgoing]:
            for n, (message_id, organ_id) in enumerate(pending):
                owner, record, body = by_id[message_id]
                urgent = record.kind == "edoc" and record.priority >= URGENT_PRIORITY
                key = Names.deliver_key(organ_id, urgent=urgent)
                for ext, path in files.get(record.id, []):
                    for index, data in read_chunks(path, ext):
                        owners.append(owner)
                        rows_of.append(n)
                        yield Outgoing(
                            self.names.deliver, key, data, f"{ext.sha256}:{index}", chunk_headers(ext, index)
                        )
                if record.id not in traced:
                    traced[record.id] = relay(body, self.seal)
                headers = {
                    "x-docbus-kind": record.kind,
                    "x-docbus-sender": record.sender,
                    "x-docbus-document-id": record.document_id,
                    "x-docbus-priority": record.priority,
                }
                owners.append(owner)
                rows_of.append(n)
                yield Outgoing(self.names.deliver, key, traced[record.id].data, record.digest, headers)

        results = self.transport.publish_many(outgoing(), window=CHUNK_WINDOW if files else None)
        failed = {rows_of[k] for k, failure in enumerate(results) if failure is not None}
        done = [row for n, row in enumerate(pending) if n not in failed]
        unfinished = {pending[n][0] for n in failed}  # receipted once its redelivery finishes it
        items = self._receipt_items(by_id, {m: r for m, r in traced.items() if m not in unfinished})
        if done:
            delivered = Delivered(utcnow(), done, items, self.router_id)
            if defer:
                self._unmarked.append(delivered)
            else:
                self.archive.record_many([], delivered=[delivered])
                self.send_receipts()
        for owner, failure in zip(owners, results, strict=True):
            if failure is None:
                continue
            current = batch.outcomes[owner] if owner is not None else None
            if current is not None and current.state in ("accepted", "duplicate"):
                batch.outcomes[owner] = Outcome("retry", current.digest, failure.reason, failure.message, failure)  # type: ignore[index]
            else:  # an answer to a refusal: what it answers stays archived
                log.warning("could not deliver an answer to a sender: %s", failure.message)

    def _receipt_items(
        self, by_id: dict[int, tuple[int | None, Message, bytes]], traced: dict[int, Relay]
    ) -> list[tuple[str, receipt.Relayed]]:
        """(sender, item) for each document relayed to all its recipients in this round
        (bus.receipt): the seal just appended to its deliveries, so a receipt signs nothing
        of its own."""
        enabled = self.registry.snapshot().enabled  # a disabled agency's inbox keeps only its mail
        out = []
        for message_id, sealed in traced.items():
            _, record, _ = by_id[message_id]
            if record.kind == "edoc" and record.sender in enabled:
                out.append((record.sender, receipt.Relayed(record.digest, record.document_id, sealed.at, sealed.seal)))
        return out

    def _receipt_messages(
        self, items: list[tuple[int, str, receipt.Relayed]]
    ) -> tuple[list[Outgoing], list[list[int]]]:
        """Receipts for ``items`` (row, sender, item) to the senders' inboxes, one per sender
        (or per RECEIPT_MAX_ITEMS of its items), and the rows each one carries."""
        per_sender: dict[str, list[tuple[int, receipt.Relayed]]] = {}
        for row, sender, item in items:
            per_sender.setdefault(sender, []).append((row, item))
        messages: list[Outgoing] = []
        rows: list[list[int]] = []
        for sender, got in per_sender.items():
            for i in range(0, len(got), RECEIPT_MAX_ITEMS):
                part = got[i : i + RECEIPT_MAX_ITEMS]
                body = receipt.build(self.seal_certificate, [item for _, item in part])
                messages.append(Outgoing(self.names.deliver, Names.deliver_key(sender), body, "", RECEIPT_HEADERS))
                rows.append([row for row, _ in part])
        return messages, rows

    def _large_files(self, message_ids: list[int]) -> dict[int, list[tuple[External, Path]]]:
        """The large files (bus.blobs) of these archived messages, by message id."""
        if not message_ids:
            return {}
        rows = statements.rows(
            AttachmentRecord,
            "attachments-of",
            statements.padded(message_ids),
            lambda v: AttachmentRecord.select().where(AttachmentRecord.message.in_(v)),
        )
        out: dict[int, list[tuple[External, Path]]] = {}
        for r in rows:
            if not r.payload.startswith("file:"):
                continue
            ext = External(r.sha256, r.size, int(r.payload.split(":")[1]))  # payload "file:<chunk size>"
            out.setdefault(r.message_id, []).append((ext, self.chunks.file(ext.sha256)))
        return out

    def _quarantine(self, batch: _Batch, i: int, sub: Submission, exc: Refused) -> None:
        """Keep the refused bytes with the reason and tell the sender with a status 02."""
        body = sub.body
        document_id = peek_document_id(body) or f"sha256:{sub.digest}"
        log.warning("refused %s from %s: %s (%s)", document_id, sub.claimed or sub.user_id, exc.reason, exc.message)
        oversized = len(body) > self.settings.limits.max_envelope_bytes
        fields = {
            "kind": peek_kind(body),
            "state": "quarantined",
            "reason": exc.reason,
            "reason_detail": exc.message,
            "user_id": sub.user_id,
            "sender": sub.claimed or (sub.user_id or ""),
            "document_id": document_id[:500],
        }
        verified = exc.verified if isinstance(exc, PolicyRefusal) else None
        if isinstance(verified, Edoc) and verified.sender.organ_id == fields["sender"]:
            # its header verified: kept for people looking for what was refused, but out of the
            # full-text index (a refused secret document's words are not for searching) and
            # linked to no document it claims to revoke or update
            header = self._fields(verified, sub.user_id)
            fields |= {k: v for k, v in header.items() if k not in ("state", "search_text", "related_document_id")}
        batch.add(Entry(body, fields, keep=QUARANTINE_HEAD if oversized else None), None)
        self._answer(batch, sub.claimed, document_id, exc.reason, exc.message, sub.digest)
        batch.outcomes[i] = Outcome("quarantined", sub.digest, exc.reason, exc.message)

    def _refuse_replay(self, batch: _Batch, i: int, sub: Submission, detail: str) -> None:
        self._answer(batch, sub.claimed, peek_document_id(sub.body), "replay", detail, sub.digest)
        batch.outcomes[i] = Outcome("quarantined", sub.digest, "replay", detail)

    def _answer(self, batch: _Batch, claimed: str, document_id: str, reason: str, detail: str, digest: str) -> None:
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
        fields = self._fields(status, None) | {"reason": reason}
        batch.add(Entry(raw, fields, [claimed], status=self._status_event(status)), None)


OUTCOME_WORDS = {
    "accepted": "accepted",
    "quarantined": "refused",
    "duplicate": "duplicate",
    "waiting": "waiting for their files",
    "staged": "file chunks",
    "retry": "to retry",
}


def describe_outcomes(counts: Counter[str]) -> str:
    """'1,204 accepted, 3 refused, 2 duplicate' in a fixed order; 'nothing' when empty."""
    parts = [f"{counts[state]:,} {word}" for state, word in OUTCOME_WORDS.items() if counts[state]]
    parts += [f"{n:,} {state}" for state, n in sorted(counts.items()) if state not in OUTCOME_WORDS and n]
    return ", ".join(parts) or "nothing"


def _waiting_since(sub: Submission) -> int:
    """When the envelope first waited for its chunks (now, if it has not); whole seconds:
    AMQP header tables carry no floats."""
    now = int(time.time())
    try:
        since = int(sub.headers.get(WAITING_SINCE) or now)
    except (TypeError, ValueError, OverflowError):
        return now
    return since if since <= now else now


class _Waiting(Exception):
    """A verified envelope whose large files have not all arrived yet."""


def _content_digest(opened: Opened) -> str:
    """The signed DigestValue: equal for every byte-level variant of the same signed content."""
    value = opened.signature_digest
    return value[:100] if value else ""


def load_trust(settings: Settings, crl_path: Path | None = None) -> Trust:
    """The CA and revocations this process trusts (``crl_path``: a CRL file, default the CA's)."""
    from signing import crl
    from signing.ca import CertificateAuthority

    ca = CertificateAuthority.load(settings.home, need_key=False)
    dated = crl.revocations(crl_path or settings.home / "ca" / "crl.pem", ca.cert)
    return Trust(
        ca=ca,
        hub_organ_id=settings.hub_organ_id,
        revoked_serials=frozenset(dated),
        limits=settings.limits,
        revocations=dated,
    )
