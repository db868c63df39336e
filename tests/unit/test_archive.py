"""The central archive on SQLite and on PostgreSQL: byte-exact storage, search, chain, report."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from bus import health, receipt, report, search, statements
from bus.archive import (
    AttachmentRecord,
    Blob,
    ChainEntry,
    Delivered,
    Message,
    PendingReceipt,
    Recipient,
    StatusEvent,
    utcnow,
)
from bus.audit import verify_archive
from bus.router import Router, load_trust
from cli import main
from tests.helpers import signed_edoc

PC, DEPT, FIN = "000.00.00.H61", "000.00.01.H61", "000.00.02.H61"


@pytest.fixture
def filled(archive_province):
    p = archive_province
    router = Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)
    docs = [
        signed_edoc(p.settings, DEPT, [PC], subject="Công văn V/v kết nối, liên thông phần mềm", number="125"),
        signed_edoc(
            p.settings, PC, [DEPT, FIN], subject="Quyết định ban hành Đề án 112", number="112", type_name="Quyết định"
        ),
        signed_edoc(p.settings, FIN, [PC], subject="Báo cáo tài chính quý III", number="77", priority=3),
        signed_edoc(p.settings, DEPT, [PC], subject="Không có tệp", number="9", files=False),  # refused
    ]
    outs = [router.process(d, routing_key=f"edoc.{s}") for d, s in zip(docs, (DEPT, PC, FIN, DEPT), strict=True)]
    return p, router, docs, outs


def test_messages_are_kept_byte_exact_and_attachments_once(filled) -> None:
    p, _, docs, outs = filled
    for data, out in zip(docs, outs, strict=True):
        m = Message.get(Message.digest == out.digest)
        assert p.archive.raw(m) == data
    # the same attachment bytes in three documents: one payload blob
    payloads = {a.payload for a in AttachmentRecord.select()}
    assert AttachmentRecord.select().count() == 3 and len(payloads) == 1
    skeleton = Blob.get_by_id(Message.get(Message.digest == outs[0].digest).skeleton)
    assert b"docbus-blob:" in bytes(skeleton.data) and b"JVBERi0" not in bytes(skeleton.data)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cong van ve viec ket noi", ["125"]),
        ("CÔNG VĂN kết nối", ["125"]),
        ("de an", ["112"]),
        ("đề án 112", ["112"]),
        ("bao cao tai chinh", ["77"]),
        ("lien thong", ["125"]),
        ("khong co", []),  # refused documents are not in the search of accepted ones
    ],
)
def test_full_text_ignores_diacritics_and_case(filled, query, expected) -> None:
    rows, total = search.search(search.Filters(text=query))
    assert sorted(m.code_number for m in rows) == sorted(expected) and total == len(expected)


def test_metadata_filters(filled) -> None:
    def codes(**kw):
        return sorted(m.code_number for m in search.search(search.Filters(**kw))[0])

    assert codes(sender=DEPT) == ["125"]
    assert codes(recipient=FIN) == ["112"]
    assert codes(type_name="Quyết định") == ["112"]
    assert codes(number="125/SNV-VP") == ["125"]
    assert codes(priority=3) == ["77"]
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=7))).date()  # the days people name are Vietnamese
    assert codes(since=today, until=today) == ["112", "125", "77"]
    assert codes(until=today - dt.timedelta(days=2)) == []
    refused = search.search(search.Filters(state="quarantined", kinds=("edoc", "status", "unknown")))[0]
    assert [m.document_id.endswith(",9/SNV-VP") for m in refused] == [True]


def test_chain_verifies_and_names_the_first_altered_entry(filled) -> None:
    p, *_ = filled
    trust = load_trust(p.settings)
    ok = verify_archive(trust)
    assert ok.ok and ok.entries == ChainEntry.select().count() >= 5 and ok.signatures >= 3
    victim = Message.get(Message.code_number == "112")
    Message.update(subject="Quyết định đã bị sửa").where(Message.id == victim.id).execute()
    bad = verify_archive(trust)
    assert not bad.ok and bad.first_problem.message_id == victim.id and "row was altered" in bad.first_problem.problem
    Message.update(subject=victim.subject).where(Message.id == victim.id).execute()
    assert verify_archive(trust).ok
    blob = Blob.get_by_id(victim.skeleton)
    Blob.update(data=bytes(blob.data).replace("Đề án".encode(), "Đề ăn".encode())).where(
        Blob.sha256 == blob.sha256
    ).execute()
    bad = verify_archive(trust)
    assert bad.first_problem.message_id == victim.id and "bytes were altered" in bad.first_problem.problem
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}
    audit = CliRunner().invoke(main, ["archive", "verify", "--no-signatures"], env=env)
    assert audit.exit_code == 5 and f"(message #{victim.id}, {victim.document_id})" in audit.output  # a check failed


def test_status_history_and_monthly_report(filled) -> None:
    p, router, _docs, _outs = filled
    from adapters import Adapter

    with Adapter(p.settings, PC, transport=p.transport) as pc, Adapter(p.settings, FIN, transport=p.transport) as fin:
        pc.receive()
        fin.receive()
        router.run()
        doc = Message.get(Message.code_number == "112").document_id
        fin.send_status(doc, PC, "03")
        router.run()
    assert {(e.organ_id, e.status_code) for e in StatusEvent.select().where(StatusEvent.document_id == doc)} == {
        (FIN, "01"),
        (FIN, "03"),
    }
    month = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=7))).strftime("%Y-%m")
    r = report.monthly(month)
    rows = {row.organ_id: row for row in r.agencies}
    assert (rows[DEPT].sent, rows[PC].sent, rows[FIN].sent) == (1, 1, 1)
    assert (rows[PC].received, rows[DEPT].received, rows[FIN].received) == (2, 1, 1)
    assert rows[PC].arrived_on_time == 2 and rows[FIN].accepted_on_time == 1
    assert rows[DEPT].refused == 1 and rows[DEPT].refused_by_reason == {"no-electronic-file": 1}
    assert rows[DEPT].unanswered == 1  # DEPT never answered 03 to the decision
    html = report.to_html(r)
    assert (
        html.startswith("<!DOCTYPE html>")
        and "<svg" in html
        and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "Sở Nội vụ" in html
    data = json.loads(report.to_json(r))
    assert data["month"] == month and {a["organ_id"] for a in data["agencies"]} == {PC, DEPT, FIN}
    assert "no-electronic-file" in report.to_csv(r)


def test_working_days_skip_the_weekend() -> None:
    friday = dt.datetime(2026, 11, 27, 16, 0)
    assert report.add_working_days(friday, 1) == dt.datetime(2026, 11, 30, 16, 0)  # Monday
    assert report.add_working_days(friday, 3) == dt.datetime(2026, 12, 2, 16, 0)
    saturday = dt.datetime(2026, 11, 28, 10, 0)
    assert report.add_working_days(saturday, 1) == dt.datetime(2026, 12, 1, 0, 0)


def test_working_days_skip_the_holidays_given() -> None:
    tet = {dt.date(2027, 2, d) for d in range(5, 12)}  # Tết Đinh Mùi, Friday 5 to Thursday 11
    thursday = dt.datetime(2027, 2, 4, 15, 0)
    assert report.add_working_days(thursday, 1, tet) == dt.datetime(2027, 2, 12, 15, 0)  # the Friday after
    assert report.add_working_days(dt.datetime(2027, 2, 8, 9, 0), 1, tet) == dt.datetime(2027, 2, 15)  # from 12th


def test_the_monthly_report_counts_deadlines_on_vietnams_working_days(filled, tmp_path) -> None:
    """The decision reached FIN on Monday 2 November at 05:30 in Vĩnh Long (Sunday 22:30 UTC):
    its 03 is due three working days later, Thursday 05:30.  Read in UTC, the delivery would
    fall on a Sunday and the deadline would be Thursday 07:00.  Days off given with --holidays
    move it further."""
    p, router, _docs, _outs = filled
    from adapters import Adapter

    with Adapter(p.settings, FIN, transport=p.transport) as fin:
        fin.receive()
        router.run()
        doc = Message.get(Message.code_number == "112")
        fin.send_status(doc.document_id, PC, "03")
        router.run()
    monday_vn = dt.datetime(2026, 11, 1, 22, 30)  # as stored: UTC
    Message.update(received_at=monday_vn - dt.timedelta(minutes=1)).where(Message.id == doc.id).execute()
    Recipient.update(delivered_at=monday_vn).where(Recipient.message == doc).execute()
    StatusEvent.update(received_at=monday_vn + dt.timedelta(minutes=5)).where(StatusEvent.status_code == "01").execute()

    def registered_at(utc: dt.datetime) -> tuple[int, int]:
        StatusEvent.update(received_at=utc).where(StatusEvent.status_code == "03").execute()
        row = next(r for r in report.monthly("2026-11").agencies if r.organ_id == FIN)
        return row.received, row.accepted_on_time

    assert registered_at(dt.datetime(2026, 11, 4, 22, 15)) == (1, 1)  # Thursday 05:15 in Vĩnh Long: in time
    assert registered_at(dt.datetime(2026, 11, 4, 23, 0)) == (1, 0)  # Thursday 06:00: late

    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}
    days_off = tmp_path / "ngay-nghi.txt"
    days_off.write_text("# nghỉ bù\n2026-11-03\n2026-11-04  # nghỉ\n", encoding="utf-8")
    args = ["report", "monthly", "--month", "2026-11", "--holidays", str(days_off)]
    res = CliRunner().invoke(main, [*args, "--format", "json"], env=env)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    fin_json = next(a for a in data["agencies"] if a["organ_id"] == FIN)
    assert (fin_json["accepted_on_time"], data["days_off"]) == (1, ["2026-11-03", "2026-11-04"])  # due Monday 9th
    assert "trừ ngày nghỉ 2026-11-03, 2026-11-04" in CliRunner().invoke(main, args, env=env).output
    days_off.write_text("2026-11-31\n", encoding="utf-8")
    bad = CliRunner().invoke(main, args, env=env)
    assert bad.exit_code == 2 and "line 1: '2026-11-31' is not a date" in bad.output


def test_prune_removes_only_refusals_and_records_it(filled) -> None:
    p, *_ = filled
    from bus.archive import PruneLog, prune

    log = prune(utcnow() + dt.timedelta(seconds=1), p.archive.database)
    assert log.messages == 1 and PruneLog.select().count() == 1
    assert Message.select().where(Message.pruned_at.is_null(False)).count() == 1
    assert all(p.archive.raw(m) for m in Message.select().where(Message.state == "accepted"))
    assert verify_archive(load_trust(p.settings)).ok  # the chain still verifies after pruning


def test_cli_search_show_export_verify(filled, tmp_path) -> None:
    p, *_ = filled
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}
    run = CliRunner().invoke
    found = json.loads(run(main, ["archive", "search", "--text", "cong van ket noi", "--json"], env=env).output)
    assert found["total"] == 1 and found["results"][0]["subject"].startswith("Công văn V/v kết nối")
    doc = found["results"][0]["document_id"]
    for nothing in ("*", "", "... -"):  # no word: refused, not every document listed as a match
        wordless = run(main, ["archive", "search", "--text", nothing], env=env)
        assert wordless.exit_code == 2 and "no word to search for" in wordless.output
    for option in ("--from", "--to", "--type", "--number"):  # an empty filter (a script's empty variable) too
        empty = run(main, ["archive", "search", option, " "], env=env)
        assert empty.exit_code == 2 and "may not be empty" in empty.output
    table = run(main, ["archive", "search", "--from", DEPT], env=env).output
    assert "Công văn V/v kết nối" in table and "page 1 of 1, 1 document(s)" in table
    shown = run(main, ["archive", "show", doc], env=env).output
    assert "cong-van.pdf" in shown and PC in shown
    out = run(main, ["archive", "export", doc, str(tmp_path / "x")], env=env)
    files = out.output.split()
    assert len(files) == 2
    again = run(main, ["archive", "export", doc, str(tmp_path / "x")], env=env)  # the same files: as they are
    assert again.exit_code == 0 and again.output.split() == files
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "cong-van.pdf").write_bytes(b"someone else's file")
    taken = run(main, ["archive", "export", doc, str(tmp_path / "y")], env=env)
    assert taken.exit_code == 1 and "is another file already" in taken.output
    assert [f.name for f in (tmp_path / "y").iterdir()] == ["cong-van.pdf"]  # nothing written, nothing replaced
    assert (tmp_path / "y" / "cong-van.pdf").read_bytes() == b"someone else's file"
    verified = run(main, ["verify", files[0]], env=env)
    assert verified.exit_code == 0, verified.output
    audit = run(main, ["archive", "verify"], env=env)
    assert audit.exit_code == 0 and "archive intact" in audit.output
    refused = run(main, ["archive", "search", "--refused"], env=env).output
    assert "no-electronic-file" in refused
    month = dt.datetime.now(dt.timezone(dt.timedelta(hours=7))).strftime("%Y-%m")  # the report's month: Vietnam time
    sheet = tmp_path / "bao-cao.csv"
    written = run(main, ["report", "monthly", "--month", month, "--format", "csv", "-o", str(sheet)], env=env)
    assert written.exit_code == 0, written.output
    data = sheet.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and "Sở Nội vụ".encode() in data  # Excel-ready, diacritics intact


def test_bench_archive_smoke_reports_every_query(tmp_path) -> None:
    """Only that the benchmark runs and reports; speed is measured by hand, not asserted."""
    res = CliRunner().invoke(
        main, ["bench", "archive", "--documents", "300", "--queries", "3", "--json"], env={"DOCBUS_HOME": str(tmp_path)}
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{") :])
    assert data["documents"] == 300 and set(data["queries"]) >= {"full text", "sender + month", "recipient"}
    assert all(v["n"] == 3 and v["p95_ms"] >= 0 for v in data["queries"].values())


def test_cached_statements_bind_values_and_refuse_a_shape_that_inlines_them(filled) -> None:
    """A statement is built once per shape; one whose values peewee would not pass as
    parameters (here a LIMIT) is refused rather than cached with the first call's values."""
    _, _, _, outs = filled
    digests = [o.digest for o in outs[:2]]
    found = statements.rows(Message, "test-find", digests, lambda v: Message.select().where(Message.digest.in_(v)))
    assert sorted(m.digest for m in found) == sorted(digests)
    other = statements.rows(
        Message, "test-find", [*digests[:1], "0" * 64], lambda v: Message.select().where(Message.digest.in_(v))
    )
    assert [m.digest for m in other] == digests[:1]  # same shape, new values
    with pytest.raises(ValueError, match="in order as parameters"):
        statements.sql(Message, "test-limited", 1, lambda v: Message.select().where(Message.digest == v[0]).limit(5))


def test_padded_in_lists_share_shapes_and_match_the_same_rows(filled) -> None:
    """Batches of 3, 4 and 5 use two statements (4 and 8 values), and find what unpadded finds."""
    _, _, _, outs = filled
    digests = [o.digest for o in outs]
    assert statements.padded([]) == [] and statements.padded(["a"]) == ["a"]
    assert statements.padded(["a", "b", "c"]) == ["a", "b", "c", "c"]
    assert len(statements.padded(list(range(100)))) == 128
    name = f"test-padded-{type(Message._meta.database.obj).__name__}"  # the fixture runs per database
    assert not [key for key in statements._SQL if key[0] == name]
    for n in (3, 4, 5):
        wanted = [*digests[: n - 1], "0" * 64]  # one that is not archived
        found = statements.rows(
            Message, name, statements.padded(wanted), lambda v: Message.select().where(Message.digest.in_(v))
        )
        assert sorted(m.digest for m in found) == sorted(digests[: n - 1])  # each row once, the missing one absent
    assert sorted(key[1] for key in statements._SQL if key[0] == name) == [4, 8]


def test_marking_deliveries_marks_exactly_those_through_the_index(filled, monkeypatch) -> None:
    """(message, organ) IN (two or more pairs) alone makes SQLite scan every recipient ever
    archived: each batch's marks would cost more as the archive grows."""
    p, _, _, outs = filled
    decision = Message.get(Message.digest == outs[1].digest)  # PC -> DEPT and FIN
    report_ = Message.get(Message.digest == outs[2].digest)  # FIN -> PC
    Recipient.update(delivered_at=None).execute()
    database = Recipient._meta.database.obj  # the proxy passes calls to it
    seen: list[tuple[str, list]] = []
    execute_sql = database.execute_sql

    def spy(sql: str, params=None, *args, **kwargs):
        seen.append((sql, list(params or [])))
        return execute_sql(sql, params, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", spy)
    p.archive.record_many([], delivered=[Delivered(utcnow(), [(decision.id, DEPT), (report_.id, PC)])])
    monkeypatch.undo()
    marked = {(r.message_id, r.organ_id) for r in Recipient.select() if r.delivered_at is not None}
    assert marked == {(decision.id, DEPT), (report_.id, PC)}  # not FIN's copy of the decision
    if p.archive.url.startswith("sqlite"):
        sql, params = next((s, v) for s, v in seen if s.lstrip().upper().startswith("UPDATE"))
        plan = " ".join(row[-1] for row in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        assert "USING INDEX" in plan and "SCAN recipient" not in plan


def test_health_counts_deliveries_not_taken_in_until_the_recipient_answers_01(filled) -> None:
    """On SQLite and PostgreSQL: a delivery counts until its recipient's 01 is archived."""
    p, router, _docs, _outs = filled
    from adapters import Adapter

    since = utcnow() - dt.timedelta(days=1)
    waiting = health.not_taken_in(since)
    assert {k: n for k, (n, _) in waiting.items()} == {PC: 2, DEPT: 1, FIN: 1}  # the refused one was never delivered
    assert all(abs((utcnow() - oldest).total_seconds()) < 600 for _, oldest in waiting.values())
    assert health.not_taken_in(utcnow() + dt.timedelta(minutes=1)) == {}  # only what was archived since
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()  # stores both and answers 01
        router.run()
    assert {k: n for k, (n, _) in health.not_taken_in(since).items()} == {DEPT: 1, FIN: 1}


def test_health_problems_name_the_agency_and_what_to_do() -> None:
    def agency(organ_id: str, oldest: float | None, *, enabled: bool = True) -> health.AgencyHealth:
        return health.AgencyHealth(organ_id, "Sở", enabled, 0, False, 0 if oldest is None else 2, oldest)

    calm = health.Health(1, 0, 0, (agency(PC, None), agency(DEPT, 3.0)), overdue_hours=24)
    assert calm.problems() == []
    late = health.Health(0, 5, 2, (agency(PC, 30.0), agency(DEPT, 40.0, enabled=False)), overdue_hours=24)
    assert late.problems() == [
        "no router is running: nothing sent is being delivered (start 'docbus router run')",
        "2 dead-lettered message(s) waiting for a decision ('docbus dead list')",
        f"{PC} (Sở) has not taken in 2 document(s), the oldest delivered 30 h ago; no adapter is connected",
    ]  # a disabled agency is cut off on purpose: not its clerks' fault
    assert late.as_dict()["problems"] == late.problems()
    stuck = health.Health(1, 0, 0, (), overdue_hours=24, receipts_late=3)
    assert stuck.problems() == [
        "3 receipt(s) not yet sent to their senders after 5 min: is a router running, and can it reach the broker?"
        " (its log says why)"
    ]


def test_receipt_items_wait_for_their_router_and_a_stopped_ones_are_taken_over(filled) -> None:
    """On SQLite and PostgreSQL: kept with the marks, read by their router only, adopted once old."""
    p, _router, _docs, _outs = filled
    assert PendingReceipt.select().count() == 0  # the filling router sent its own
    now = utcnow()
    item = receipt.Relayed("a" * 64, "000.00.00.H61,2026/11/27,1/QĐ-UBND", "2026/11/27 10:00:00", "c2VhbA==")
    other = receipt.Relayed("b" * 64, "000.00.01.H61,2026/11/27,2/SNV-VP", "2026/11/27 10:00:01", "c2VhbA==")
    p.archive.record_many([], delivered=[Delivered(now - dt.timedelta(minutes=10), [], [(PC, item)], "stopped")])
    p.archive.record_many([], delivered=[Delivered(now, [], [(DEPT, other)], "running")])
    assert p.archive.receipts_to_send("mine", 10) == [] and health.late_receipts(now) == 1
    assert p.archive.adopt_receipts("mine", now - dt.timedelta(minutes=1)) == 1  # not the running one's
    assert p.archive.adopt_receipts("another", now - dt.timedelta(minutes=1)) == 0  # taken: not taken twice
    [(row, sender, got)] = p.archive.receipts_to_send("mine", 10)
    assert (sender, got) == (PC, item)  # Vietnamese DocumentId intact
    p.archive.receipts_sent([row])
    assert health.late_receipts(now) == 0 and [r.router for r in PendingReceipt.select()] == ["running"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://docbus@127.0.0.1/archive", "runs on SQLite (sqlite:///path/archive.db) or PostgreSQL"),
        ("archive.db", "runs on SQLite"),
        ("postgresql://docbus:s3cret@127.0.0.1:1/archive", "cannot open the archive database postgresql://docbus:***@"),
    ],
)
def test_an_archive_url_it_cannot_use_is_one_line_without_the_password(tmp_path, url, expected) -> None:
    res = CliRunner().invoke(
        main, ["archive", "search"], env={"DOCBUS_HOME": str(tmp_path), "DOCBUS_DB_URL": url}, catch_exceptions=False
    )
    assert res.exit_code == 3
    assert expected in res.output and "s3cret" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_sqlite_archive_commits_to_disk_before_the_router_acks(tmp_path) -> None:
    """WAL with synchronous FULL: a commit the router acks after survives a power cut."""
    from bus.archive import Archive, db

    archive = Archive(f"sqlite:///{tmp_path / 'archive.db'}")
    try:
        assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        archive.close()


def test_days_people_name_are_vietnamese_days_and_times_are_shown_in_vietnam_time(filled) -> None:
    """A document archived at 23:30 UTC on the 27th arrived at 06:30 on the 28th in Vĩnh Long:
    a search from the 28th finds it, one up to the 27th does not, and the table shows 06:30."""
    p, *_ = filled
    late = dt.datetime(2026, 11, 27, 23, 30)
    Message.update(received_at=late).where(Message.code_number == "125").execute()
    Message.update(received_at=dt.datetime(2026, 11, 20, 3, 0)).where(Message.code_number != "125").execute()
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}

    def search(*args: str) -> dict:
        res = CliRunner().invoke(main, ["archive", "search", *args, "--json"], env=env)
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    assert [r["code"] for r in search("--since", "2026-11-28")["results"]] == ["125/SNV-VP"]
    assert "125/SNV-VP" not in [r["code"] for r in search("--until", "2026-11-27")["results"]]
    assert search("--since", "2026-11-28")["results"][0]["received_at"] == "2026-11-27 23:30:00"  # JSON: UTC
    shown = CliRunner().invoke(main, ["archive", "search", "--since", "2026-11-28"], env=env).output
    assert "Received (UTC+7)" in shown and "2026-11-28 06:30:00" in shown and "23:30" not in shown


def test_vietnam_time_helpers() -> None:
    from bus.edxml import vn_day_start, vn_text

    assert vn_day_start(dt.date(2026, 12, 1)) == dt.datetime(2026, 11, 30, 17, 0)
    assert vn_text("2026-11-27 23:30:00") == "2026-11-28 06:30:00"
    assert vn_text(dt.datetime(2026, 11, 27, 23, 30)) == "2026-11-28 06:30:00"
    assert vn_text("2026-12-31 17:05") == "2027-01-01 00:05"  # to the minute stays to the minute
    assert vn_text(None) == "" and vn_text("pending") == "pending"


def test_search_pages_say_when_the_count_stopped_or_the_page_is_past_the_end(filled, monkeypatch) -> None:
    p, *_ = filled
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}

    def search_out(*args: str) -> str:
        res = CliRunner().invoke(main, ["archive", "search", *args], env=env)
        assert res.exit_code == 0, res.output
        return res.output.strip().splitlines()[-1]

    assert search_out("--page", "1") == "page 1 of 1, 3 document(s)"
    assert search_out("--page", "3") == "page 3 is past the last page (1); 3 document(s)"
    monkeypatch.setattr(search, "COUNT_CAP", 2)  # three accepted documents: more than the count goes
    assert search_out() == "page 1; more than 2 documents: add filters to narrow the search"
    found = json.loads(CliRunner().invoke(main, ["archive", "search", "--json"], env=env).output)
    assert (found["total"], found["total_capped"], len(found["results"])) == (3, True, 3)


def test_a_clerk_may_name_today_or_yesterday(filled) -> None:
    p, *_ = filled
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": "mem", "DOCBUS_DB_URL": p.settings.db_url}

    def total(*args: str) -> int:
        res = CliRunner().invoke(main, ["archive", "search", *args, "--json"], env=env)
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["total"]

    assert total("--since", "today") == total("--since", "hôm nay") == 3  # archived just now
    assert total("--until", "yesterday") == 0
    wrong = CliRunner().invoke(main, ["archive", "search", "--since", "tomorrow"], env=env)
    assert wrong.exit_code == 2 and "(or today, yesterday)" in wrong.output


@pytest.mark.parametrize(
    ("field", "column"),
    [
        ("code_number", Message.code_number),
        ("code_notation", Message.code_notation),
        ("doc_type", Message.doc_type),
        ("type_name", Message.type_name),
        ("document_id", Message.document_id),
    ],
)
def test_the_strict_profile_accepts_no_longer_a_value_than_the_archive_keeps(memory_province, field, column) -> None:
    """PostgreSQL refuses a value longer than its VARCHAR: one the gate let through would fail
    the archive at every delivery attempt and be dead-lettered, its sender never told."""
    from bus import compose, safexml, schema
    from bus.errors import SchemaViolation
    from tests.helpers import edoc, identity

    def with_length(n: int) -> object:
        msg = edoc("000.00.00.H61", ["000.00.01.H61"])
        setattr(msg, field, "1" * n)
        return safexml.parse(compose.sign(msg, identity(memory_province.settings, "000.00.00.H61")))

    schema.validate(with_length(column.max_length), "strict")
    with pytest.raises(SchemaViolation):
        schema.validate(with_length(column.max_length + 1), "strict")
