"""The archive on PostgreSQL (DOCBUS_DB_URL=postgresql://...), through the real broker."""

from __future__ import annotations

import time

import pytest

from adapters import Adapter
from bus import topology
from bus.archive import Message
from bus.demo import RouterThread
from bus.topology import Names
from bus.transport import AmqpTransport
from tests.conftest import AGENCIES, _make

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def test_router_archives_into_postgresql(tmp_path, broker_url, namespace, keys_template, pg_database) -> None:
    transport = AmqpTransport(broker_url)
    p = _make(tmp_path, transport, namespace, keys_template, db_url=pg_database)
    f = tmp_path / "cv.pdf"
    f.write_bytes(b"%PDF-1.4 pg")
    pc, dept = AGENCIES[0][0], AGENCIES[1][0]
    try:
        with RouterThread(p.settings, p.archive, p.hub), Adapter(p.settings, dept) as a, Adapter(p.settings, pc) as b:
            sent = a.send([pc], subject="Công văn lưu trữ PostgreSQL", number="3", notation="SNV", files=[f])
            got = []
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                got = b.receive(idle_timeout=0.3)
            assert [g.document_id for g in got] == [sent.document_id]
            statuses = []
            while not statuses and time.monotonic() < deadline:
                statuses = a.receive(idle_timeout=0.3)
        assert p.archive.database.__class__.__name__.startswith("Postgres")
        rec = Message.get((Message.document_id == sent.document_id) & (Message.kind == "edoc"))
        assert rec.subject == "Công văn lưu trữ PostgreSQL"
        assert p.archive.raw(rec).startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        assert [s.status_code for s in statuses] == ["01"]
    finally:
        names = Names(namespace)
        full = topology.core(names)
        for code, _ in AGENCIES:
            full = full + topology.agency(names, code)
        transport.delete(full)
        transport.close()
