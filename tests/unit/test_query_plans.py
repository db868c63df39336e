"""Every statement on the router's and the adapter's hot paths finds its rows through an index.

A scan costs nothing on a test archive and grows with every document archived: at 40,000
recipients one of them cost 2.6 ms per batch before it was caught.  This runs documents and
statuses through the router and the adapters, then asks SQLite for the plan of each
statement they cached (``bus.statements``).
"""

from __future__ import annotations

import re

from adapters import Adapter
from bus import statements
from bus.archive import Message
from bus.router import Router, load_trust

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"
SCAN = re.compile(r"\bSCAN ([A-Za-z_]\w*)")  # "SCAN 4 CONSTANT ROWS" is the IN list, not a table


def test_hot_path_statements_use_indexes(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    pdf = p.settings.home / "cv.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, DEPT, transport=p.transport) as dept:
        for n in range(3):
            pc.send([DEPT, FIN], subject=f"Công văn {n}", number=str(n), notation="UBND-VP", files=[pdf])
        router.run()
        got = dept.receive()
        dept.send_status(got[0].document_id, PC, "03")
        router.run()
        pc.receive()
        databases = [Message._meta.database.obj, pc.store.db, dept.store.db]  # the archive, then the stores
        assert Message.select().count() >= 7  # the documents and the statuses went through
        plans: dict[str, str] = {}
        for (name, arity, kind), sql in list(statements._SQL.items()):
            if "Sqlite" in kind.__name__:
                plans[name] = _plan(databases, sql, arity)
    assert plans, "no cached statements: the hot paths changed"
    scans = {name: plan for name, plan in plans.items() if SCAN.search(plan)}
    assert not scans, scans


def _plan(databases: list, sql: str, arity: int) -> str:
    """The plan on the first database that has the statement's tables."""
    for database in databases:
        try:
            rows = database.execute_sql("EXPLAIN QUERY PLAN " + sql, [None] * arity).fetchall()
        except Exception as exc:  # another database's table: try the next
            if "no such table" in str(exc):
                continue
            raise
        return " | ".join(str(r[-1]) for r in rows)
    raise AssertionError(f"no database has the tables of {sql}")
