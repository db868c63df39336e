"""Delivery guarantees through the real broker: poison messages, urgent first, the outbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters import Adapter
from bus.demo import RouterThread
from bus.router import Router
from bus.topology import DELIVERY_LIMIT
from tests.helpers import receive_until, router_batches

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
PC, DEPT = "000.00.00.H61", "000.00.01.H61"


def docbus(p, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        DOCBUS_HOME=str(p.settings.home),
        DOCBUS_NAMESPACE=p.settings.namespace,
        DOCBUS_AMQP_URL=p.settings.amqp_url,
    )
    env.pop("DOCBUS_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=input,
    )


def test_poison_message_is_dead_lettered_listed_and_replayed(broker_province, tmp_path, monkeypatch) -> None:
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    real_process = Router.process_batch

    def crashing(self, subs, **kw):
        if any("ĐỘC".encode() in s.body for s in subs):
            raise RuntimeError("simulated router bug")
        return real_process(self, subs, **kw)

    monkeypatch.setattr(Router, "process_batch", crashing)
    with Adapter(p.settings, DEPT) as dept, Adapter(p.settings, PC) as pc:
        poison = dept.send([PC], subject="Văn bản ĐỘC", number="1", notation="X", files=[f])
        good = dept.send([PC], subject="Văn bản lành", number="2", notation="X", files=[f])
        with RouterThread(p.settings, p.archive, p.hub) as rt:
            got = receive_until(pc, 1)
            assert [g.document_id for g in got] == [good.document_id]  # the router went on
            deadline = time.monotonic() + 30
            listed = []
            while time.monotonic() < deadline and not listed:
                listed = json.loads(docbus(p, "dead", "list", "--json").stdout)
                time.sleep(0.5)
            assert rt.error is None
        assert len(listed) == 1
        assert listed[0]["routing_key"] == f"edoc.{DEPT}" and "simulated router bug" in listed[0]["reason"]
        shown = docbus(p, "dead", "show", str(listed[0]["id"]))
        assert "Văn bản ĐỘC" in shown.stdout and "simulated router bug" in shown.stdout
        from bus.archive import Failure

        assert Failure.get().attempts >= DELIVERY_LIMIT
        # fixed router: replay it
        monkeypatch.setattr(Router, "process_batch", real_process)
        replayed = docbus(p, "dead", "replay", str(listed[0]["id"]))
        assert replayed.returncode == 0, replayed.stderr
        with RouterThread(p.settings, p.archive, p.hub):
            got = receive_until(pc, 1)
        assert [g.document_id for g in got] == [poison.document_id]
        kept = docbus(p, "dead", "purge", str(listed[0]["id"]), input="n\n")
        assert kept.returncode != 0 and "kept" in kept.stdout
        purged = docbus(p, "dead", "purge", str(listed[0]["id"]), "--yes")
        assert purged.returncode == 0 and json.loads(docbus(p, "dead", "list", "--json").stdout) == []


def send_backlog(dept: Adapter, f: Path, count: int) -> None:
    """``count`` ordinary documents from ``dept`` to PC, each with the file ``f``."""
    for n in range(count):
        dept.send([PC], subject=f"Công văn thường {n}", number=str(n), notation="X", files=[f])


def send_urgent(dept: Adapter, f: Path):
    return dept.send([PC], subject="Công điện hỏa tốc", number="999", notation="CĐ", files=[f], priority=3)


def test_urgent_document_reaches_the_recipient_ahead_of_a_backlog(broker_province, tmp_path) -> None:
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    with Adapter(p.settings, DEPT) as dept:
        send_backlog(dept, f, 150)
        urgent = send_urgent(dept, f)
    with RouterThread(p.settings, p.archive, p.hub):
        from bus.archive import Recipient

        deadline = time.monotonic() + 60
        while (
            Recipient.select().where(Recipient.delivered_at.is_null(False)).count() < 151
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
    handed: list[str] = []
    with Adapter(p.settings, PC, on_receive=lambda item, msg, raw: handed.append(item.document_id)) as pc:
        receive_until(pc, 151)
    assert len(handed) == 151
    assert handed[0] == urgent.document_id


def test_an_urgent_document_sent_while_the_router_works_a_backlog_goes_next(broker_province, tmp_path) -> None:
    """The router buffers what the broker sends ahead (a prefetch of 200) and takes batches
    from it; an urgent document arriving meanwhile is read before the next batch, not after
    the buffered backlog (docs/performance-history.md, step 15)."""
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    with Adapter(p.settings, DEPT) as dept:
        send_backlog(dept, f, 200)
        sent_after: list[int] = []

        def after_the_second_batch(batches: list[list[str]]) -> None:
            if len(batches) == 2:
                send_urgent(dept, f)
                sent_after.append(len(batches))

        batches = router_batches(p, max_batch=20, after_batch=after_the_second_batch)
    taken_in = next(i for i, keys in enumerate(batches) if any(k.startswith("urgent.") for k in keys))
    assert sent_after == [2] and sum(map(len, batches)) == 201
    assert taken_in <= 3, [len(b) for b in batches]  # the first or second batch after it was sent


def test_send_with_the_broker_down_is_queued_and_goes_when_it_returns(broker_province, tmp_path) -> None:
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    down = p.settings.with_(amqp_url="amqp://guest:guest@127.0.0.1:1/%2F")
    (p.settings.agency_home(DEPT) / "broker.json").rename(p.settings.agency_home(DEPT) / "broker.json.bak")
    try:
        with Adapter(down, DEPT) as offline:
            res = offline.send([PC], subject="Gửi khi mất mạng", number="5", notation="X", files=[f])
            assert not res.published and offline.pending() == 1
            assert res.error is not None and "127.0.0.1:1" in res.error  # the broker's answer, for the clerk
    finally:
        (p.settings.agency_home(DEPT) / "broker.json.bak").rename(p.settings.agency_home(DEPT) / "broker.json")
    cli = docbus(
        p, "send", "--from", DEPT, "--to", PC, "--subject", "Qua CLI", "--number", "6", "--notation", "X", str(f)
    )
    assert cli.returncode == 0  # the broker is up for this one
    with RouterThread(p.settings, p.archive, p.hub), Adapter(p.settings, DEPT) as dept, Adapter(p.settings, PC) as pc:
        dept.run(idle_exit=1.0)  # flushes the outbox by itself
        assert dept.pending() == 0
        got = receive_until(pc, 2)
    assert sorted(g.subject for g in got) == ["Gửi khi mất mạng", "Qua CLI"]


def test_cli_send_says_queued_when_the_broker_is_down(broker_province, tmp_path) -> None:
    p = broker_province
    f = tmp_path / "a.pdf"
    f.write_bytes(b"%PDF")
    (p.settings.agency_home(DEPT) / "broker.json").unlink()
    env = dict(
        os.environ,
        DOCBUS_HOME=str(p.settings.home),
        DOCBUS_NAMESPACE=p.settings.namespace,
        DOCBUS_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "send",
            "--from",
            DEPT,
            "--to",
            PC,
            "--subject",
            "x",
            "--number",
            "1",
            "--notation",
            "X",
            str(f),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip().startswith(DEPT)
    assert "queued in the outbox, not sent yet: " in proc.stderr and "Traceback" not in proc.stderr
    assert "RabbitMQ" in proc.stderr.splitlines()[-1]  # why: the broker's own answer, not a guess
    assert len(proc.stderr.splitlines()) == 1  # said once, in the command's words, not again as a log line
