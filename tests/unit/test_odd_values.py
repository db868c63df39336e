"""Odd but properly signed header values: each is refused by the strict profile with its
reason or accepted, delivered, verified by the recipient and written to a drop folder, on
SQLite and PostgreSQL alike; never an error the router or the adapter did not mean (which
would dead-letter it unanswered)."""

from __future__ import annotations

import itertools
import re

from adapters import Adapter
from adapters.drop import write
from bus import compose
from bus.edxml import Attachment
from bus.router import Router, load_trust
from tests.helpers import edoc, identity

PC, DEPT = "000.00.00.H61", "000.00.01.H61"
VALUES = [
    "", " ", "\t\n", "a" * 3000, "Công văn\u0301\u0301", "e\u0301", "😀📄", "\u202eevil", "../../etc/passwd",
    "a/b\\c", ".", "..", "CON", "x" * 300, "<&>\"'", "\x7f", "\u200b", "\ufeff",
]  # fmt: skip
FIELDS = ["subject", "content", "code_notation", "type_name", "promulgation_place", "attachment name"]


def test_odd_values_are_refused_with_a_reason_or_delivered_whole(archive_province, tmp_path) -> None:
    p = archive_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    folder = tmp_path / "drop"
    folder.mkdir()
    written: list[str] = []
    accepted = 0
    for n, (field, value) in enumerate(itertools.product(FIELDS, VALUES), start=1):
        msg = edoc(PC, [DEPT], number=str(n))
        if field == "attachment name":
            msg.attachments = [Attachment.from_bytes(value, b"%PDF-1.4 x", "application/pdf", content_id="cid:1")]
        else:
            setattr(msg, field, value)
        out = router.process(compose.sign(msg, identity(p.settings, PC)), routing_key=f"edoc.{PC}")
        if out.state != "accepted":
            assert (out.state, out.reason) == ("quarantined", "schema-invalid"), (field, value)
            continue
        accepted += 1

        def hand(item, got, raw) -> None:
            written.append(write(folder, item.digest, got, raw).name)

        with Adapter(p.settings, DEPT, transport=p.transport, on_receive=hand) as a:
            [item] = a.receive()
        assert item.state == "handed", (field, value, item.reason)
    assert accepted >= 90 and len(written) == accepted
    # every file in the folder is named after its message's key; nothing was written elsewhere
    assert all(re.fullmatch(r"[0-9a-f]{16}([-.].+)?", f.name) for f in folder.iterdir())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["drop", "home"]
