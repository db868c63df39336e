"""``docbus bench``: the bus against the raw broker, in one run on one machine.

1. Router throughput: N pre-signed ~5 KB edocs (RSA-2048) from many agencies are queued,
   then router processes (``docbus router run``) verify, validate, archive and deliver them,
   and send their senders the receipts; documents/s is N over the time from the first
   archived to the last delivered, or to the last receipt sent if that is later.  In the
   same run, a raw pika relay moves the same bytes from one quorum queue to another with
   publisher confirms streamed asynchronously, acking each input once its output is
   confirmed: the best a router that does nothing can do on this broker.  It runs in this
   process, so it writes frames the way the bus does (``bus.transport`` joins the frames
   queued on a connection into one socket write): 30-40 % faster than pika's own
   frame-by-frame writes here, the stricter yardstick.
2. Latency: agencies' adapters submit documents at a fixed total rate; a recipient adapter
   stores them and answers 01; submit -> stored, p50/p95/p99, and the rate achieved.
3. Large attachment: one file end to end through adapters and a router, in chunks beside a
   small signed envelope (bus.blobs), with the peak RSS of each docbus process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from peewee import fn

from adapters import Adapter
from benchmarks.floor import checks_floor
from benchmarks.stats import (
    CpuPeak,
    WalWatch,
    broker_wal_folder,
    busy_pct,
    cpu_seconds,
    local_broker_pid,
    machine,
    machine_ticks,
    p99_by_window,
    percentile,
    summary_ms,
)
from bus import compose, longrun, province, receipt, topology
from bus.acks import AckRuns
from bus.archive import Archive, Message, PendingReceipt, Recipient, utcnow
from bus.blobs import file_sha256
from bus.config import Settings
from bus.edxml import Attachment, Edoc, Organ
from bus.errors import DocbusError
from bus.topology import Names
from bus.transport import CONNECT_ERRORS, AmqpTransport, Outgoing, broker_unavailable
from signing.identity import Identity

ROOT = Path(__file__).resolve().parents[1]
HANDED_EDOC = re.compile(r"edoc from \S+: (\S+) ")  # what `docbus adapter run` prints per edoc
log = logging.getLogger("docbus.bench")
PARTS = frozenset({"router", "latency", "large"})
Progress = Callable[[str, int, int], None]
"""Told ``(stage, done, total)`` as each part of a run advances: the CLI draws one bar per stage."""


def _quiet(stage: str, done: int, total: int) -> None:
    """The ``Progress`` of a run nobody watches."""


@dataclass
class Bench:
    settings: Settings
    codes: list[str]
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(
        self, argv: list[str], *, stdout: int = subprocess.DEVNULL, stderr: int = subprocess.DEVNULL
    ) -> subprocess.Popen:
        """A process of the run, in the project's folder with the run's environment (its
        DOCBUS_HOME, namespace and broker URL)."""
        return subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=stdout, stderr=stderr)

    def router(self, *extra: str) -> subprocess.Popen:
        p = self.spawn([sys.executable, "-m", "cli", "router", "run", *extra])
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # as systemd stops them
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def peak_rss_of(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def setup(home: Path, amqp_url: str, agencies: int, namespace: str, progress: Progress = _quiet) -> Bench:
    home = home.absolute()  # the routers and the recipient run in the project's folder, not the caller's
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(amqp_url=amqp_url, home=home, namespace=namespace)
    archive = Archive(settings.archive_url)
    t = AmqpTransport(amqp_url)
    try:
        province.init(settings, archive, t)
        every = (f"000.{i // 100:02d}.{i % 100:02d}.H61" for i in range(1, agencies + 2))
        codes = [c for c in every if c != settings.hub_organ_id][:agencies]
        for k, code in enumerate(codes, 1):
            # no per-agency broker users: the benchmark publishes every agency's mail itself
            province.add_agency(settings, archive, t, code, f"Cơ quan {code}", broker_user=False)
            progress("registering agencies", k, len(codes))
    finally:
        t.close()
        archive.close()
    env = dict(os.environ, DOCBUS_HOME=str(home), DOCBUS_NAMESPACE=namespace, DOCBUS_AMQP_URL=amqp_url)
    env.pop("DOCBUS_DB_URL", None)
    return Bench(settings, codes, env)


def teardown(b: Bench) -> None:
    b.stop()
    names = Names(b.settings.namespace)
    full = topology.core(names)
    for code in b.codes:
        full = full + topology.agency(names, code)
    t = AmqpTransport(b.settings.amqp_url)
    try:
        t.delete(full)
    finally:
        t.close()


def presign(
    b: Bench, n: int, *, size: int = 5000, seed: int = 3, progress: Progress = _quiet
) -> list[tuple[str, bytes]]:
    """``n`` signed edocs of about ``size`` bytes: (sender, bytes)."""
    rng = random.Random(seed)
    idents = {c: Identity.load(c, b.settings.agency_home(c)) for c in b.codes}
    payload = bytes(rng.getrandbits(8) for _ in range(max(100, (size - 5250) * 3 // 4)))  # signature and header ~5.2 KB
    out = []
    for i in range(n):
        sender, recipient = rng.sample(b.codes, 2)
        edoc = compose.new_edoc(
            Organ(sender, idents[sender].name),
            [Organ(recipient)],
            subject=f"Công văn V/v kiểm thử hiệu năng số {i}",
            number=str(i),
            notation="HN",
            attachments=[Attachment.from_bytes("van-ban.pdf", payload, "application/pdf")],
        )
        out.append((sender, compose.sign(edoc, idents[sender])))
        if i % 100 == 99 or i == n - 1:
            progress("signing documents", i + 1, n)
    return out


def router_throughput(
    b: Bench, docs: list[tuple[str, bytes]], workers: int, progress: Progress = _quiet
) -> dict[str, Any]:
    names = Names(b.settings.namespace)
    archive = Archive(b.settings.archive_url)
    known = Message.select(fn.MAX(Message.id)).scalar() or 0  # what the latency part archived before
    # its last 01s may still be waiting for a router: they are not this part's documents
    delivered = (
        Recipient.select()
        .join(Message)
        .where((Message.id > known) & (Message.kind == "edoc") & Recipient.delivered_at.is_null(False))
    )
    t = AmqpTransport(b.settings.amqp_url)
    try:
        failures = t.publish_many(
            (Outgoing(names.submit, Names.submit_key("edoc", sender), data, user_id="guest") for sender, data in docs),
            window=1000,
        )
        if any(failures):
            raise RuntimeError(f"the broker refused {sum(1 for f in failures if f)} of the benchmark's documents")
    finally:
        t.close()
    routers = [b.router() for _ in range(workers)]
    broker = local_broker_pid()
    n = len(docs)
    done = 0
    deadline = time.monotonic() + max(120, n / 20)
    peak: dict[int, float] = {}
    # CPU from the first delivery seen to the last, so the routers' start-up is not counted:
    # (documents delivered by then, routers' CPU, RabbitMQ's CPU, the machine's ticks)
    marks: list[tuple[int, float, float, tuple[int, int]]] = []
    receipted_at = None  # when the last receipt had gone out (the routers send them every second)
    while time.monotonic() < deadline:
        done = delivered.count()
        progress(f"router x{workers}, throughput", done, n)
        for r in routers:
            peak[r.pid] = max(peak.get(r.pid, 0.0), peak_rss_of(r.pid))
        if done >= n and not PendingReceipt.select().exists():
            receipted_at = utcnow()
        if done > 0 and (not marks or receipted_at is not None):
            routers_cpu = sum(cpu_seconds(r.pid) for r in routers)
            marks.append((done, routers_cpu, cpu_seconds(broker) if broker else math.nan, machine_ticks()))
        if receipted_at is not None:
            break
        time.sleep(0.25 if done < n else 0.02)
    first = (
        Message.select(Message.received_at)
        .where((Message.id > known) & (Message.kind == "edoc"))
        .order_by(Message.received_at)
        .first()
    )
    last = delivered.order_by(Recipient.delivered_at.desc()).first()
    b.stop()
    archive.close()
    end = last.delivered_at if last else None
    if end is not None and receipted_at is not None:
        end = max(end, receipted_at)
    elapsed = (end - first.received_at).total_seconds() if first and end else float("nan")
    out: dict[str, Any] = {
        "documents": n,
        "delivered": done,
        "workers": workers,
        "seconds": round(elapsed, 2),
        "docs_per_s": round(done / elapsed, 1) if elapsed else None,
        "router_peak_rss_mib": sorted(peak.values()),
    }
    if last and receipted_at:  # how long after the last delivery the last receipt had gone out
        out["receipts_after_s"] = round(max(0.0, (receipted_at - last.delivered_at).total_seconds()), 3)
    if len(marks) == 2 and marks[1][0] > marks[0][0]:
        (d0, r0, k0, t0), (d1, r1, k1, t1) = marks
        per_doc = {"routers": r1 - r0, "RabbitMQ": k1 - k0}
        out["cpu_ms_per_doc"] = {
            name: round(1000 * v / (d1 - d0), 3) for name, v in per_doc.items() if not math.isnan(v)
        }
        out["cpu_busy_pct"] = busy_pct([t0, t1])
    return out


def raw_relay(
    amqp_url: str, bodies: list[bytes], namespace: str, prefetch: int = 500, connect_timeout: float = 15.0
) -> dict[str, Any]:
    """Quorum queue A -> quorum queue B, streamed confirms, input acked when its output is confirmed.

    A broker that stops answering (RabbitMQ 3.10 has stopped completing handshakes here for
    minutes after heavy quorum-queue churn) ends the relay with BrokerUnavailable, or with
    what it relayed before the broker went quiet: it never waits forever."""
    qa, qb = f"{namespace}.relay.in", f"{namespace}.relay.out"
    setup_conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = setup_conn.channel()
    for q in (qa, qb):
        ch.queue_delete(q)
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", qa, body, properties=pika.BasicProperties(delivery_mode=2))
    setup_conn.close()

    n = len(bodies)
    state: dict[str, Any] = {"acked": 0, "seq": 0, "pending": {}, "start": None, "end": None}
    acks = AckRuns()

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(chan: Any) -> None:
        state["chan"] = chan
        chan.add_on_close_callback(lambda _ch, _reason: conn.close() if conn.is_open else None)
        chan.confirm_delivery(on_confirm)
        chan.basic_qos(prefetch_count=prefetch)
        chan.basic_consume(qa, on_message)

    def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
        if state["start"] is None:
            state["start"] = time.perf_counter()
        chan.basic_publish("", qb, body, properties=pika.BasicProperties(delivery_mode=2))
        state["seq"] += 1
        state["pending"][state["seq"]] = method.delivery_tag

    def on_confirm(frame: Any) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        pending = state["pending"]
        seqs = [s for s in pending if s <= tag] if multiple else [tag]
        inputs = [pending.pop(s) for s in seqs if s in pending]
        for i in inputs:  # each input once its output is safe, as few ack frames as the bus sends
            acks.ack(i)
        for input_tag, run in acks.frames():
            state["chan"].basic_ack(input_tag, multiple=run)
        state["acked"] += len(inputs)
        if state["acked"] >= n:
            state["end"] = time.perf_counter()
            conn.close()

    params = pika.URLParameters(amqp_url)
    params.stack_timeout = connect_timeout  # TCP connect + AMQP handshake
    failed: list[BaseException] = []

    def on_open_error(c: Any, exc: BaseException) -> None:
        failed.append(exc)
        c.ioloop.stop()

    conn = pika.SelectConnection(
        params,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda c, _exc: c.ioloop.stop(),
    )

    def give_up() -> None:  # the broker stopped answering: stop waiting, report what was relayed
        if conn.is_open:
            conn.close()
        else:
            conn.ioloop.stop()

    timer = threading.Timer(max(120, n / 100), lambda: conn.ioloop.add_callback_threadsafe(give_up))
    timer.start()
    broker = local_broker_pid()
    cpu_before = (time.process_time(), cpu_seconds(broker) if broker else math.nan)  # this process: finer than /proc
    try:
        conn.ioloop.start()
    finally:
        timer.cancel()
    cpu = {
        "relay": time.process_time() - cpu_before[0],
        "RabbitMQ": (cpu_seconds(broker) if broker else math.nan) - cpu_before[1],
    }
    if failed:
        raise broker_unavailable(amqp_url, failed[0])
    cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    cch = cleanup.channel()
    for q in (qa, qb):
        cch.queue_delete(q)
    cleanup.close()
    elapsed = (state["end"] or time.perf_counter()) - (state["start"] or time.perf_counter())
    return {
        "messages": n,
        "relayed": state["acked"],
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(state["acked"] / elapsed, 1) if elapsed else None,
        "cpu_ms_per_msg": {
            name: round(1000 * v / state["acked"], 3) for name, v in cpu.items() if state["acked"] and not math.isnan(v)
        },
    }


WINDOW_S = 10.0  # s: the latency run's p99 is also given for each window this long
ANSWERS_EVERY_S = 0.25  # how often the senders' answers are read (AnswerTaker)
SENDERS = 4  # agencies submitting at once in the latency part (one agency's submit waits for its confirm)


class AnswerTaker:
    """The sending agencies take their answers (the recipient's 01s) off the broker, as their
    adapters do in a province: a process of its own (``take_answers``), unread.

    Left in the senders' inboxes, a run's 01s pile up in four quorum queues (24,000 of them
    after two minutes at 200/s), which RabbitMQ keeps in memory and copies out of its
    write-ahead log at every roll-over; no province runs that way.  Verifying and storing
    them is each agency's own machine's work, which the two cores here do not share with
    the bus, so it is left out; what taking them costs is counted with the senders' CPU.  A
    thread of the sending process would hold the GIL the four senders' ``submit()`` wait for.
    """

    def __init__(self, b: Bench, queues: list[str]) -> None:
        self.taken = 0  # the 01s
        self.receipted = 0  # documents named in the data centre's receipts (bus.receipt)
        code = "import sys; from benchmarks.bus_bench import take_answers; take_answers(sys.argv[1:])"
        self._proc = b.spawn([sys.executable, "-c", code, *queues], stdout=subprocess.PIPE)
        self.pid = self._proc.pid

    def stop(self) -> None:
        """Stop it and read how many it took."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self._proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        words = out.split()  # its last line is the two counts
        if len(words) >= 2 and words[-1].isdigit() and words[-2].isdigit():
            self.taken, self.receipted = int(words[-2]), int(words[-1])


def take_answers(queues: list[str]) -> None:
    """``AnswerTaker``'s process: take whatever comes to ``queues`` until SIGTERM, then print how
    many 01s and how many documents' receipts it took.  Automatic acks, and what arrived read
    four times a second: the broker still
    delivers and settles every 01 (the bus's cost), while this process wakes 4 times a second
    instead of 200 (on this host a pika consumer woken for each message spends about 0.3 ms of
    CPU on it, the agency's machine's cost, not the bus's: docs/performance-history.md, step 14)."""
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    taken = [0, 0]  # 01s, documents receipted

    def take(_ch: Any, _method: Any, properties: Any, body: bytes) -> None:
        if (properties.headers or {}).get("x-docbus-kind") == receipt.KIND:
            taken[1] += body.count(b'"digest":')  # one per document (bus.receipt.build)
        else:
            taken[0] += 1

    conn = pika.BlockingConnection(pika.URLParameters(os.environ["DOCBUS_AMQP_URL"]))
    try:
        ch = conn.channel()
        for q in queues:
            ch.basic_consume(q, take, auto_ack=True)
        while not stopping:
            before = -1
            while before != sum(taken):  # everything the socket holds, then sleep
                before = sum(taken)
                conn.process_data_events(time_limit=0)
            time.sleep(ANSWERS_EVERY_S)
    finally:
        print(*taken, flush=True)
        with contextlib.suppress(Exception):
            conn.close()


def latency(
    b: Bench,
    count: int,
    rate: float,
    workers: int = 1,
    senders: int = SENDERS,
    progress: Progress = _quiet,
    samples_to: Path | None = None,
) -> dict[str, Any]:
    """Offer ``rate`` documents/s in total from ``senders`` agencies (threads of this process,
    each with its own adapter, as each agency runs its own); time each document from
    ``submit()`` until the recipient's adapter (``docbus adapter run``, its own process,
    answering 01 as agencies do) has stored it and handed it over: the moment this process
    reads the line the adapter prints for it, after the store's commit and the ack.  (A
    ``--drop`` file each would add the host's file creation, 0.3-0.8 ms of kernel CPU here,
    to the recipient's share of the two cores: a cost of the agency's system, not the bus.)

    One agency alone cannot offer 200/s: its ``submit`` signs, commits the outbox with an
    fsync and waits for the broker's confirm.  The rate actually achieved is reported, with
    the CPU time each part of the bus spent per document (the routers, the recipient, the
    sending agencies, a local RabbitMQ) and how busy the whole machine was while sending:
    latency climbs steeply as that nears 100 %."""
    recipient = b.codes[1]
    codes = [c for c in b.codes if c != recipient][:senders]
    payload = b"%PDF-1.4 " + os.urandom(2500)

    def edoc_from(code: str, number: str) -> Edoc:
        return compose.new_edoc(
            Organ(code, f"Cơ quan {code}"),
            [Organ(recipient)],
            subject=f"Độ trễ {number}",
            number=number,
            notation="HN",
            attachments=[Attachment.from_bytes("a.pdf", payload, "application/pdf")],
        )

    plans: dict[str, list[tuple[int, Edoc]]] = {c: [] for c in codes}
    for i in range(count):
        code = codes[i % len(codes)]
        plans[code].append((i, edoc_from(code, f"L{i}")))
    warm_ups = {code: edoc_from(code, f"W{k}") for k, code in enumerate(codes)}
    sent_at: dict[str, float] = {}
    submitted: set[str] = set()
    unsent: list[int] = []
    _purge(b.settings.amqp_url, Names(b.settings.namespace).inboxes(recipient))  # the throughput run's mail
    receiver = b.spawn([sys.executable, "-m", "cli", "adapter", "run", "--agency", recipient], stdout=subprocess.PIPE)
    b.procs.append(receiver)
    handed: dict[str, float] = {}  # DocumentId -> when the recipient reported it stored

    def read_reports() -> None:
        for line in receiver.stdout:  # type: ignore[union-attr]
            at = time.time()
            found = HANDED_EDOC.match(line.decode("utf-8", "replace"))
            if found:
                handed.setdefault(found.group(1), at)
                if len(handed) % 50 == 0 or len(handed) == count + len(codes):  # drawn rarely: senders' process
                    progress(f"latency at {rate:g}/s", len(handed), count + len(codes))

    threading.Thread(target=read_reports, daemon=True).start()
    routers = [b.router() for _ in range(workers)]
    time.sleep(2.0)  # routers and receiver connected

    def stored() -> dict[str, float]:
        """DocumentId -> when the recipient reported it stored, for this run's documents."""
        return {doc: handed[doc] for doc in list(submitted) if doc in handed}

    # CPU per document, by process: how close the machine is to full, and who spends it
    broker = local_broker_pid()
    watched = {"routers": [r.pid for r in routers], "recipient": [receiver.pid]}
    if broker is not None:
        watched["RabbitMQ"] = [broker]
    sending = [len(codes)]
    senders_cpu: list[float] = []
    busy: list[tuple[int, int]] = []  # the machine's CPU ticks when sending starts and ends
    lock = threading.Lock()
    ready = threading.Barrier(len(codes) + 1)  # every sender's adapter open and its warm-up sent
    go = threading.Event()
    clock: dict[str, float] = {}  # the timed run's start (perf_counter) and the senders' CPU then
    failed: list[Exception] = []

    def send(code: str) -> None:
        try:
            with Adapter(b.settings, code) as s:
                s.submit(warm_ups[code])  # untimed: the path's first use (connections, caches, statements)
                ready.wait()
                go.wait()
                timed(code, s)
        except Exception as exc:
            failed.append(exc)
            ready.abort()  # before the start the run cannot begin: the main thread says why
            raise

    def timed(code: str, s: Adapter) -> None:
        """Send ``code``'s share on schedule, then wait (flushing) until the recipient stored it."""
        start = clock["start"]
        for i, edoc in plans[code]:
            delay = start + i / rate - time.perf_counter()  # document i is due at i/rate
            if delay > 0:
                time.sleep(delay)
            sent_at[edoc.document_id] = time.time()
            result = s.submit(edoc)  # sign, outbox, publish: what an agency's system calls
            submitted.add(edoc.document_id)
            if not result.published:
                log.warning("benchmark document %s stayed in the outbox", edoc.document_id)
        with lock:  # the last agency to finish sending reads the senders' CPU
            sending[0] -= 1
            if sending[0] == 0:
                senders_cpu.append(cpu_seconds() - clock["senders_cpu"])
                busy.append(machine_ticks())
        deadline = time.monotonic() + 30
        mine = {e.document_id for _, e in plans[code]}
        while not mine <= stored().keys() and time.monotonic() < deadline:
            s.flush()  # what `docbus adapter run` does with whatever the broker did not take
            time.sleep(0.2)
        unsent.append(s.pending())

    # from the warm-ups' 01s on, until every document is in
    answers = AnswerTaker(b, [q for c in codes for q in Names(b.settings.namespace).inboxes(c)])
    watched["answers"] = [answers.pid]  # counted with the senders' CPU
    try:
        threads = [threading.Thread(target=send, args=(c,), daemon=True) for c in codes]
        for t in threads:
            t.start()
        # The run measures the steady state: one warm-up document from each sender goes through
        # the whole path first (a router's or an adapter's first message after it starts also
        # prepares its statements and caches), untimed and uncounted.
        try:
            ready.wait(timeout=60)
        except threading.BrokenBarrierError:
            if failed and isinstance(failed[0], DocbusError):
                raise failed[0] from None  # the broker went away, ...: its own error and exit code
            why = failed[0] if failed else "no answer in 60 s"
            raise DocbusError(f"a sending agency could not start: {why}") from None
        warm = {e.document_id for e in warm_ups.values()}
        deadline = time.monotonic() + 30
        while not warm <= handed.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
        longrun.settle()  # the sending agencies are long-running processes too, as `docbus adapter run` is
        cpu_before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watched.items()}
        clock["senders_cpu"] = cpu_seconds()
        clock["start"] = start = time.perf_counter() + 0.2
        go.set()
        time.sleep(max(0.0, start - time.perf_counter()))
        busy.insert(0, machine_ticks())
        broker_peak = CpuPeak(broker) if broker is not None else None
        wal = WalWatch(broker_wal_folder(broker) if broker is not None else None)
        with broker_peak or contextlib.nullcontext(), wal:  # until every document is in
            for t in threads:
                t.join()
        stored_at = stored()
        cpu = {name: sum(cpu_seconds(p) for p in pids) - cpu_before[name] for name, pids in watched.items()}
    finally:
        answers.stop()
    taking = cpu.pop("answers")
    if senders_cpu:
        cpu["senders"] = senders_cpu[0] + taking
    b.stop()
    del routers
    done = [(sent_at[d], stored_at[d] - sent_at[d]) for d in sent_at if d in stored_at]  # (submitted, latency)
    samples = [latency for _, latency in done]
    windows = p99_by_window(done, count / rate, WINDOW_S)  # document i was due at i/rate
    if samples_to is not None:  # when each one went and arrived: where the slow ones cluster
        write_samples(samples_to, sent_at, stored_at)
    window = max(sent_at.values()) - min(sent_at.values()) if len(sent_at) > 1 else 0.0
    return {
        "offered_per_s": rate,
        "achieved_per_s": round((len(sent_at) - 1) / window, 1) if window else None,
        "senders": len(codes),
        "workers": workers,
        "documents": count,
        "stored": len(samples),
        "left_in_outbox": sum(unsent),
        # the 01s back with the senders when the last document was stored, of those due (the
        # warm-ups' included): the router answering the 01s as fast as the documents come
        "answers_taken": answers.taken,
        "answers_due": count + len(codes),
        # ... and the documents the data centre's receipts named back with them (bus.receipt)
        "receipts_taken": answers.receipted,
        "cpu_ms_per_doc": {
            name: round(1000 * v / len(samples), 2) for name, v in cpu.items() if samples and not math.isnan(v)
        },
        "cpu_busy_pct": busy_pct(busy),
        # RabbitMQ's busiest half second, in % of a core: a write-ahead-log roll-over shows here
        "broker_peak_pct": broker_peak.peak if broker_peak is not None else None,
        # when RabbitMQ rolled its write-ahead log over while sending, and how long it took
        # (None: no local broker whose log this user can see)
        "broker_wal_rollovers": wal.seen(start),
        # the p99 of each whole WINDOW_S of the run: an even tail, or one stall (runs of 20 s and more)
        "p99_by_window_ms": windows,
        "window_s": WINDOW_S,
    } | summary_ms(samples)


def write_samples(path: Path, sent_at: dict[str, float], stored_at: dict[str, float]) -> None:
    """Each document of the latency run as ``{"document_id", "submitted", "stored", "ms"}``
    (Unix seconds; ``stored`` null if it never was), in the order they were submitted: a
    p99 says how slow the tail is, this says when it happened (a broker log roll-over, a
    stall of the host) and whether the slow ones came together."""
    rows = [
        {
            "document_id": doc,
            "submitted": round(at, 6),
            "stored": round(stored_at[doc], 6) if doc in stored_at else None,
            "ms": round(1000 * (stored_at[doc] - at), 3) if doc in stored_at else None,
        }
        for doc, at in sorted(sent_at.items(), key=lambda item: item[1])
    ]
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=0), encoding="utf-8")


def _purge(amqp_url: str, queues: list[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_purge(q)
    finally:
        conn.close()


def large_attachment(b: Bench, size: int, progress: Progress = _quiet) -> dict[str, Any]:
    """One file of ``size`` bytes end to end (``docbus send``, ``docbus router run``, ``docbus
    adapter run`` one after the other); the peak RSS of each, the time, and the digest of
    what the recipient stored."""
    sender, recipient = b.codes[0], b.codes[1]
    path = b.settings.home / "large.bin"
    h = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    digest = h.hexdigest()
    stage = f"large file ({size / 2**20:g} MiB): send, route, receive"
    progress(stage, 0, 3)
    send = b.spawn(
        [
            sys.executable,
            "-m",
            "cli",
            "send",
            "--from",
            sender,
            "--to",
            recipient,
            "--subject",
            "Tệp lớn",
            "--number",
            "TL1",  # its own số: the latency part's are L0, L1, … (one sender has them all with two agencies)
            "--notation",
            "HN",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    start = time.perf_counter()
    peaks: dict[str, float] = {}

    def watch(name: str, p: subprocess.Popen) -> None:
        while p.poll() is None:
            peaks[name] = max(peaks.get(name, 0.0), peak_rss_of(p.pid))
            time.sleep(0.05)

    w = threading.Thread(target=watch, args=("docbus send (adapter)", send))
    w.start()
    _, send_err = send.communicate(timeout=600)
    w.join()
    if send.returncode != 0:
        raise DocbusError(f"docbus send of the large file failed: {send_err.decode(errors='replace').strip()}")
    progress(stage, 1, 3)
    router = b.router("--idle-exit", "3")
    wr = threading.Thread(target=watch, args=("docbus router run", router))
    wr.start()
    router.wait(timeout=600)
    wr.join()
    progress(stage, 2, 3)
    drop = b.settings.home / "drop"
    recv = b.spawn(
        [sys.executable, "-m", "cli", "adapter", "run", "--agency", recipient, "--idle-exit", "2", "--drop", str(drop)]
    )
    wv = threading.Thread(target=watch, args=("docbus adapter run", recv))
    wv.start()
    recv.wait(timeout=600)
    wv.join()
    progress(stage, 3, 3)
    seconds = time.perf_counter() - start
    with Adapter(b.settings, recipient) as r:
        items = [i for i in r.inbox("edoc") if i.subject == "Tệp lớn"]
        att = r.document(items[0].document_id).attachments[0] if items else None
        # a file over the inline limit (2 MiB) is stored beside the envelope; a smaller one is in it
        got = None if att is None else file_sha256(att.path)[0] if att.path else hashlib.sha256(att.data).hexdigest()
    intact = got == digest
    path.unlink()
    return {
        "bytes": size,
        "seconds": round(seconds, 2),
        "intact": intact,
        "peak_rss_mib": peaks,
    }


FLOOR_SAMPLE = 2000  # envelopes the checks' floor is measured on (benchmarks.floor)


def budget(relay: dict[str, Any], envelopes: list[bytes]) -> dict[str, Any]:
    """The CPU per document a router at half the relay's rate may spend, with RabbitMQ's share,
    on this machine's cores, beside what the checks alone cost (benchmarks.floor): whether
    the ratio target is within reach of these libraries here, measured in the same run."""
    cores = os.cpu_count() or 1
    half = relay["msgs_per_s"] / 2 if relay["msgs_per_s"] else None
    floor = checks_floor(envelopes)
    out: dict[str, Any] = {
        "cores": cores,
        "half_relay_ms_per_doc": round(cores * 1000 / half, 3) if half else None,
        "checks_floor_ms_per_doc": floor,
    }
    relaying = relay.get("cpu_ms_per_msg", {})
    if {"relay", "RabbitMQ"} <= set(relaying):  # a router relays each document too, beside its checks
        out["least_ms_per_doc"] = round(floor["total"] + relaying["relay"] + relaying["RabbitMQ"], 3)
    return out


def run(
    settings: Settings,
    *,
    documents: int,
    agencies: int,
    workers: int,
    rate: float,
    latency_seconds: float,
    large_bytes: int,
    latency_workers: int = 1,
    parts: frozenset[str] = PARTS,
    progress: Progress = _quiet,
    samples_to: Path | None = None,
) -> dict[str, Any]:
    """Run the ``parts`` asked for (``PARTS``: latency, router, large, in that order) in one setup.

    ``workers`` routers in the throughput run, ``latency_workers`` in the latency run: a
    backlog of thousands is drained fastest by several routers overlapping their confirm
    waits, a steady 200/s with the lowest delay by one, whose batches grow with the load
    while several would each work on batches of one (docs/PERFORMANCE.md)."""
    namespace = f"bench{os.getpid()}"
    try:  # the raw relay and the queue purges talk to pika directly
        b = setup(settings.home / "bench-bus", settings.amqp_url, agencies, namespace, progress)
        out: dict[str, Any] = {"machine": machine()}
        try:
            # the steady rate first: after the throughput part has written some 430 MiB to the
            # quorum queues' write-ahead log, RabbitMQ's roll-over of that log (a second or two of
            # a whole core) falls in the next seconds, which measures the burst, not 200/s
            # (docs/performance-history.md, step 11: over minutes at 200/s one comes every ~2.5 min anyway)
            if "latency" in parts:
                count = max(10, int(rate * latency_seconds))
                out["latency"] = latency(b, count, rate, latency_workers, progress=progress, samples_to=samples_to)
            if "router" in parts:
                docs = presign(b, documents, progress=progress)
                out["envelope_bytes_avg"] = round(sum(len(d) for _, d in docs) / len(docs))
                relay = raw_relay(settings.amqp_url, [d for _, d in docs], namespace)
                router = router_throughput(b, docs, workers, progress)
                ratio = (
                    router["docs_per_s"] / relay["msgs_per_s"] if router["docs_per_s"] and relay["msgs_per_s"] else None
                )
                out |= {"raw_relay": relay, "router": router, "router_vs_relay": round(ratio, 3) if ratio else None}
                out["budget"] = budget(relay, [d for _, d in docs[:FLOOR_SAMPLE]])
                # the 20,000 delivered documents would sit in the inboxes (and the broker's memory)
                names = Names(b.settings.namespace)
                _purge(settings.amqp_url, [q for code in b.codes for q in names.inboxes(code)])
            if "large" in parts:
                out["large_attachment"] = large_attachment(b, large_bytes, progress)
        finally:
            teardown(b)
        return out
    except CONNECT_ERRORS as exc:
        raise broker_unavailable(settings.amqp_url, exc) from exc


def shortfalls(data: dict[str, Any]) -> list[str]:
    """What a run did not complete: its figures then measure something else (a router that
    delivers nothing is very fast), so ``docbus bench`` says so and exits non-zero."""
    out = []
    if "router" in data:
        r, x = data["router"], data["raw_relay"]
        if x["relayed"] < x["messages"]:
            out.append(f"the raw relay moved {x['relayed']} of {x['messages']} messages")
        if r["delivered"] < r["documents"]:
            out.append(f"the routers delivered {r['delivered']} of {r['documents']} documents")
    if "latency" in data and data["latency"]["stored"] < data["latency"]["documents"]:
        lat = data["latency"]
        out.append(f"the recipient stored {lat['stored']} of the latency run's {lat['documents']} documents")
    if "large_attachment" in data and data["large_attachment"]["intact"] is not True:
        out.append("the large attachment did not arrive intact")
    return out


def _budget_rows(b: dict[str, Any] | None) -> list[list[str]]:
    if not b:
        return []
    floor = b["checks_floor_ms_per_doc"]
    return [
        [
            "CPU per document at half the relay",
            "not measured" if b["half_relay_ms_per_doc"] is None else f"{b['half_relay_ms_per_doc']} ms",
            f"{b['cores']} cores' time, routers and RabbitMQ together",
        ],
        [
            "CPU per document, the checks alone",
            f"{floor['total']} ms",
            "lxml, XSD, C14N, RSA, seal, SQLite; no docbus code",
        ],
        *(
            [["CPU per document, the least a router needs", f"{b['least_ms_per_doc']} ms", "those checks + relaying"]]
            if "least_ms_per_doc" in b
            else []
        ),
    ]


def _rollover(r: dict[str, Any]) -> str:
    took = "still going at the end" if r["seconds"] is None else f"{r['seconds']:g} s"
    return f"at {r['at_s']:g} s, {took}"


def _ratio(value: float | None) -> str:
    """A ratio as three decimals: "0.1" would hide whether it is 0.095 or 0.104."""
    return "not measured" if value is None else f"{value:.3f}"


def rows(data: dict[str, Any]) -> list[list[str]]:
    """The table ``docbus bench`` prints: one figure per row, each short enough to be shown
    whole (the CLI's tables cut a cell at 60 characters)."""
    out: list[list[str]] = []
    if "router" in data:
        r, x = data["router"], data["raw_relay"]
        out += [
            [
                f"raw pika relay, ~{data['envelope_bytes_avg']} B",
                f"{x['msgs_per_s']} msg/s",
                f"{x['relayed']}/{x['messages']} in {x['seconds']} s; confirms streamed, frames coalesced",
            ],
            [
                f"router x{r['workers']}: verify, validate, archive, deliver",
                f"{r['docs_per_s']} docs/s",
                f"{r['delivered']}/{r['documents']} in {r['seconds']} s"
                + (f", last receipt {r['receipts_after_s']} s after" if "receipts_after_s" in r else ""),
            ],
            ["router / relay", _ratio(data["router_vs_relay"]), ""],
            *[
                [f"CPU per document, {name}", f"{ms} ms", f"throughput run; machine {r['cpu_busy_pct']} % busy"]
                for name, ms in r.get("cpu_ms_per_doc", {}).items()
            ],
            *[
                [f"CPU per message, {name}", f"{ms} ms", "raw relay"]
                for name, ms in x.get("cpu_ms_per_msg", {}).items()
            ],
            *_budget_rows(data.get("budget")),
            [
                f"peak RSS, router x{r['workers']}",
                ", ".join(str(v) for v in r.get("router_peak_rss_mib", [])) + " MiB",
                "throughput run",
            ],
        ]
    if "latency" in data:
        lat = data["latency"]
        out += [
            [
                f"latency at {lat['offered_per_s']}/s, router x{lat['workers']}",
                f"p50 {lat['p50_ms']}, p95 {lat['p95_ms']}, p99 {lat['p99_ms']} ms",
                f"achieved {lat['achieved_per_s']}/s from {lat['senders']} senders; "
                f"{lat['stored']}/{lat['documents']} stored",
            ],
        ]
        out += [[f"CPU per document, {name}", f"{ms} ms", "latency run"] for name, ms in lat["cpu_ms_per_doc"].items()]
        if "answers_taken" in lat:
            out.append(
                [
                    "01s / documents' receipts back with the senders",
                    f"{lat['answers_taken']} / {lat.get('receipts_taken', '—')} of {lat['answers_due']}",
                    "when the last document was stored",
                ]
            )
        if lat.get("p99_by_window_ms"):
            w = lat["p99_by_window_ms"]
            out.append(
                [
                    f"p99 of each {lat['window_s']:g} s",
                    f"{min(w)}–{max(w)} ms",
                    f"{len(w)} windows; their median {percentile(w, 50):.1f} ms",
                ]
            )
        if lat.get("broker_wal_rollovers") is not None:
            seen = lat["broker_wal_rollovers"]
            told = "; ".join(map(_rollover, seen[:2])) + ("; …" if len(seen) > 2 else "")
            out.append(["RabbitMQ log roll-overs while sending", str(len(seen)), told])
        out.append(
            [
                "machine busy while sending",
                f"{lat['cpu_busy_pct']} %",
                f"RabbitMQ's busiest 0.5 s: {lat['broker_peak_pct']} % of a core" if lat.get("broker_peak_pct") else "",
            ]
        )
    if "large_attachment" in data:
        big = data["large_attachment"]
        out.append(
            [
                f"large attachment {big['bytes'] / 1048576:.1f} MiB",
                f"{big['seconds']} s",
                "intact (SHA-256 checked)" if big["intact"] else "NOT intact: digest differs",
            ]
        )
        rss = big["peak_rss_mib"].items()
        out += [[f"peak RSS, {name}", f"{mib} MiB", "large attachment run"] for name, mib in rss]
    return out
