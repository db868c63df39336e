"""Vietnamese typed as "Unicode tổ hợp" (base letters and combining marks, NFD) or "dựng sẵn"
(precomposed, NFC) is one text: sent precomposed, archived so that an exact filter finds it
whichever way the clerk typed, and a received envelope's bytes kept as they came."""

from __future__ import annotations

import unicodedata

from click.testing import CliRunner

from adapters import Adapter
from bus import compose
from bus.archive import Message
from bus.edxml import Attachment
from bus.router import Router, load_trust
from cli import main
from tests.helpers import PDF, edoc, identity

PC, DEPT = "000.00.00.H61", "000.00.01.H61"


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_what_this_bus_sends_is_precomposed(memory_province) -> None:
    p = memory_province
    subject, kind, name = "Quyết định về tổ chức bộ máy", "Quyết định", "Tờ trình.pdf"
    assert nfd(subject) != subject  # the test means something only if the forms differ
    with Adapter(p.settings, DEPT, transport=p.transport) as a:
        sent = a.send(
            [PC],
            subject=nfd(subject),
            number="7",
            notation="QĐ-SNV",
            type_name=nfd(kind),
            content=nfd("Nội dung"),
            files=[Attachment.from_bytes(nfd(name), PDF, "application/pdf")],
        )
        raw = bytes(a.store.Outbox.get(a.store.Outbox.document_id == sent.document_id).raw)
    text = raw.decode("utf-8")
    assert subject in text and kind in text and name in text and "Nội dung" in text
    assert nfd(subject) not in text and nfd(name) not in text


def test_the_archive_finds_a_type_typed_either_way_and_keeps_received_bytes(memory_province) -> None:
    p = memory_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    msg = edoc(DEPT, [PC], number="8")
    msg.type_name, msg.subject = nfd("Quyết định"), nfd("Về việc tổ chức")  # as another system may send
    raw = compose.sign(msg, identity(p.settings, DEPT))
    out = router.process(raw, routing_key=f"edoc.{DEPT}")
    assert out.state == "accepted"
    archived = Message.get(Message.digest == out.digest)
    assert (archived.type_name, archived.subject) == ("Quyết định", "Về việc tổ chức")
    assert p.archive.raw(archived) == raw  # the signed bytes themselves are untouched
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}
    for typed in ("Quyết định", nfd("Quyết định")):
        found = CliRunner().invoke(main, ["archive", "search", "--type", typed], env=env)
        assert found.exit_code == 0 and msg.document_id in found.output, found.output
