"""A province of real processes for fault-injection tests: routers and adapters as
``docbus`` subprocesses, senders in the test process, counts read from the stores."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adapters import Adapter
from bus import province, topology
from bus.archive import Archive
from bus.brokeradmin import BrokerAdmin
from bus.config import Settings
from bus.topology import Names
from bus.transport import AmqpTransport

ROOT = Path(__file__).resolve().parents[2]
AGENCIES = [
    ("000.00.00.H61", "UBND tỉnh Vĩnh Long"),
    ("000.00.01.H61", "Sở Nội vụ"),
    ("000.00.02.H61", "Sở Tài chính"),
    ("000.00.11.H61", "UBND huyện Long Hồ"),
]
SCALE = float(os.environ.get("DOCBUS_SOAK_SCALE", "1"))


def scaled(n: int) -> int:
    return max(10, int(n * SCALE))


@dataclass
class Province:
    settings: Settings
    env: dict[str, str]
    routers: list[subprocess.Popen] = field(default_factory=list)
    adapters: dict[str, subprocess.Popen] = field(default_factory=dict)
    sent: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # (sender, document_id, recipients)

    # -- processes
    def _spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.settings.home / f"{args[0]}-{len(self.routers)}-{time.monotonic_ns()}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def start_router(self) -> subprocess.Popen:
        p = self._spawn("router", "run")
        self.routers.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def start_adapter(self, code: str) -> None:
        self.adapters[code] = self._spawn("adapter", "run", "--agency", code)

    def stop_all(self) -> None:
        for p in [*self.routers, *self.adapters.values()]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # as systemd stops them
        for p in [*self.routers, *self.adapters.values()]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    # -- traffic
    def send(self, n: int, *, recipients_per_doc: int = 2, priority: int = 0, senders: list[str] | None = None) -> None:
        codes = [c for c, _ in AGENCIES]
        senders = senders or codes
        pdf = self.settings.home / "doc.pdf"
        pdf.write_bytes(b"%PDF-1.4 fault test\n%%EOF\n")
        adapters = {c: Adapter(self.settings, c) for c in senders}
        try:
            for i in range(n):
                sender = senders[i % len(senders)]
                others = [c for c in codes if c != sender]
                to = tuple(others[(i + k) % len(others)] for k in range(recipients_per_doc))
                res = adapters[sender].send(
                    list(to),
                    subject=f"Văn bản kiểm thử số {i}",
                    number=str(len(self.sent) + 1),
                    notation="KT",
                    files=[pdf],
                    priority=priority,
                )
                self.sent.append((sender, res.document_id, to))
            for a in adapters.values():  # whatever the broker did not confirm (a restart) goes now
                deadline = time.monotonic() + 120
                while a.pending() and time.monotonic() < deadline:
                    a.flush() or time.sleep(0.5)
        finally:
            for a in adapters.values():
                a.close()

    # -- counting
    def store_rows(self, code: str, query: str) -> list[tuple]:
        path = self.settings.agency_home(code) / "store.db"
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    def counts(self) -> dict[str, int]:
        """Delivered documents and 01 statuses, with duplicates counted separately."""
        expected_docs = Counter((r, d) for _, d, to in self.sent for r in to)
        expected_01 = Counter((s, d, r) for s, d, to in self.sent for r in to)
        got_docs: Counter = Counter()
        got_01: Counter = Counter()
        for code, _ in AGENCIES:
            for (doc,) in self.store_rows(
                code, "select document_id from inbox where kind='edoc' and state != 'invalid'"
            ):
                got_docs[(code, doc)] += 1
            for sender, doc in self.store_rows(
                code, "select sender, document_id from inbox where kind='status' and status_code='01'"
            ):
                got_01[(code, doc, sender)] += 1
        receipted = {
            (code, doc)
            for code, _ in AGENCIES
            for (doc,) in self.store_rows(
                code, "select document_id from outbox where kind='edoc' and accepted_at is not null"
            )
        }
        archive = Archive(self.settings.archive_url)
        from bus.archive import Message

        archived = Counter(
            (m.sender, m.document_id)
            for m in Message.select().where((Message.kind == "edoc") & (Message.state == "accepted"))
        )
        return {
            "documents": len(self.sent),
            "deliveries_expected": sum(expected_docs.values()),
            "delivered": sum(1 for k in expected_docs if got_docs[k] >= 1),
            "delivered_twice": sum(1 for k in got_docs if got_docs[k] > 1),
            "archived": sum(1 for s, d, _ in self.sent if archived[(s, d)] >= 1),
            "archived_twice": sum(1 for k in archived if archived[k] > 1),
            "status01_expected": sum(expected_01.values()),
            "status01_back": sum(1 for k in expected_01 if got_01[k] >= 1),
            "status01_twice": sum(1 for k in got_01 if got_01[k] > 1),
            # the data centre's receipt back with the sender (bus.receipt)
            "receipted": sum(1 for s, d, _ in self.sent if (s, d) in receipted),
            "_archive": archive,  # type: ignore[dict-item]
        }

    def wait_complete(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts()
            c.pop("_archive").close()
            if (
                c["delivered"] == c["deliveries_expected"]
                and c["status01_back"] == c["status01_expected"]
                and c["receipted"] == c["documents"]
            ) or time.monotonic() > deadline:
                return c
            time.sleep(1)


def make_province(tmp_path: Path, broker_url: str, namespace: str) -> Province:
    home = tmp_path / "home"
    env = dict(os.environ, DOCBUS_HOME=str(home), DOCBUS_NAMESPACE=namespace, DOCBUS_AMQP_URL=broker_url)
    env.pop("DOCBUS_DB_URL", None)
    settings = Settings(amqp_url=broker_url, home=home, namespace=namespace)
    archive = Archive(settings.archive_url)
    t = AmqpTransport(broker_url)
    try:
        province.init(settings, archive, t)
        for code, name in AGENCIES:
            province.add_agency(settings, archive, t, code, name)
    finally:
        t.close()
        archive.close()
    return Province(settings, env)


def teardown(p: Province) -> None:
    p.stop_all()
    names = Names(p.settings.namespace)
    full = topology.core(names)
    for code, _ in AGENCIES:
        full = full + topology.agency(names, code)
    t = AmqpTransport(p.settings.amqp_url)
    t.delete(full)
    t.close()
    admin = BrokerAdmin(p.settings.amqp_url)
    from bus.brokeradmin import user_name

    for code, _ in AGENCIES:
        user = user_name(names, code)
        admin.close_connections(user)
        admin.delete_user(user)


def report(name: str, c: dict[str, int]) -> str:
    line = ", ".join(f"{k} {v}" for k, v in c.items() if not k.startswith("_"))
    print(f"\n[{name}] {line}")
    return line
