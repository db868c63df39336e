"""The operator's and clerk's commands, as separate processes, against the real broker."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus import topology
from bus.brokeradmin import BrokerAdmin, user_name
from bus.edxml import VN_TZ
from bus.topology import Names
from bus.transport import AmqpTransport

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
PC, DEPT, DISTRICT = "000.00.00.H61", "000.00.01.H61", "000.00.03.H61"


@pytest.fixture
def env(tmp_path, broker_url, namespace):
    e = dict(os.environ, DOCBUS_HOME=str(tmp_path / "home"), DOCBUS_NAMESPACE=namespace, DOCBUS_AMQP_URL=broker_url)
    e.pop("DOCBUS_DB_URL", None)
    yield e
    admin = BrokerAdmin(broker_url)
    for user in (user_name(Names(namespace), organ) for organ in (PC, DEPT, DISTRICT)):
        admin.close_connections(user)
        admin.delete_user(user)
    names = Names(namespace)
    t = AmqpTransport(broker_url)
    agencies = topology.agency(names, PC) + topology.agency(names, DEPT) + topology.agency(names, DISTRICT)
    t.delete(topology.core(names) + agencies)
    t.close()


def docbus(env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docbus {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def test_send_route_receive_answer_trace(env, tmp_path) -> None:
    docbus(env, "init")
    docbus(env, "agency", "add", PC, "UBND tỉnh Vĩnh Long")
    docbus(env, "agency", "add", DEPT, "Sở Nội vụ", "--parent", PC)
    agencies = json.loads(docbus(env, "agency", "list", "--json").stdout)
    assert [(a["organ_id"], a["parent"]) for a in agencies] == [(PC, None), (DEPT, PC)]
    assert "Sở Nội vụ" in docbus(env, "agency", "list").stdout

    pdf = tmp_path / "to-trinh.pdf"
    pdf.write_bytes(b"%PDF-1.4 to trinh")
    sent = docbus(
        env,
        "send",
        "--from",
        DEPT,
        "--to",
        PC,
        "--subject",
        "Tờ trình V/v kết nối",
        "--number",
        "45",
        "--notation",
        "TTr-SNV",
        "--type",
        "Tờ trình",
        "--priority",
        "1",
        str(pdf),
    )
    document_id = sent.stdout.strip()
    assert document_id.startswith(f"{DEPT},") and document_id.endswith("45/TTr-SNV")

    docbus(env, "router", "run", "--idle-exit", "1.5")
    inbox = json.loads(docbus(env, "inbox", "--agency", PC, "--json").stdout)
    assert [(i["kind"], i["document_id"], i["subject"]) for i in inbox] == [
        ("edoc", document_id, "Tờ trình V/v kết nối")
    ]
    # the clerk's daily look names a Vietnamese day, whatever the hour in UTC
    today = dt.datetime.now(VN_TZ).date()
    day = json.loads(docbus(env, "inbox", "--agency", PC, "--no-fetch", "--since", str(today), "--json").stdout)
    assert [i["document_id"] for i in day] == [document_id]
    later = str(today + dt.timedelta(days=1))
    assert json.loads(docbus(env, "inbox", "--agency", PC, "--no-fetch", "--since", later, "--json").stdout) == []
    saved = docbus(env, "inbox", "save", "--agency", PC, document_id, str(tmp_path / "out"))
    assert Path(saved.stdout.strip()).read_bytes() == pdf.read_bytes()
    answer = json.loads(docbus(env, "status", "send", "--agency", PC, "--code", "03", document_id, "--json").stdout)
    assert (answer["status_code"], answer["to"], answer["published"], answer["error"]) == ("03", DEPT, True, None)
    listed = docbus(env, "inbox", "--agency", PC, "--no-fetch").stdout
    # taken in by the clerk's listing, not handed to a system (no `adapter run` here); sent with --priority 1
    assert "stored, answered 03" in listed and " khẩn " in listed
    docbus(env, "router", "run", "--idle-exit", "1.5")

    statuses = json.loads(docbus(env, "inbox", "--agency", DEPT, "--json").stdout)
    assert [(s["status_code"], s["sender"]) for s in statuses] == [("01", PC), ("03", PC)]
    [register] = json.loads(docbus(env, "sent", "--agency", DEPT, "--json").stdout)
    assert (register["document_id"], register["subject"]) == (document_id, "Tờ trình V/v kết nối")
    assert [(r["organ_id"], r["status"]) for r in register["recipients"]] == [(PC, "03")]
    one = docbus(env, "sent", "--agency", DEPT, document_id).stdout
    assert "03 Đã tiếp nhận" in one and PC in one
    trace = json.loads(docbus(env, "trace", "--json", document_id).stdout)
    assert [s["code"] for s in trace["submissions"][0]["recipients"][0]["statuses"]] == ["01", "03"]
    table = docbus(env, "trace", document_id).stdout
    assert "Tờ trình V/v kết nối" in table and "03 Đã tiếp nhận" in table

    missing = docbus(env, "trace", "000.00.01.H61,2020/01/01,1/X", check=False)
    assert missing.returncode == 3 and "no document" in missing.stderr and "Traceback" not in missing.stderr


def set_up(env) -> None:
    """A province with the People's Committee and one department, through the CLI."""
    docbus(env, "init")
    docbus(env, "agency", "add", PC, "UBND tỉnh Vĩnh Long")
    docbus(env, "agency", "add", DEPT, "Sở Nội vụ")


def test_refused_send_reaches_the_sender_as_02(env, tmp_path) -> None:
    set_up(env)
    unknown = send_from_dept(env, tmp_path, "Gửi nhầm", "1", "X", to="000.00.55.H61")
    docbus(env, "router", "run", "--idle-exit", "1.5")
    inbox = json.loads(docbus(env, "inbox", "--agency", DEPT, "--json").stdout)
    assert [(i["status_code"], i["document_id"]) for i in inbox] == [("02", unknown.stdout.strip())]
    assert "unknown-recipient" in inbox[0]["subject"] and "000.00.55.H61" in inbox[0]["subject"]

    # the refused document's number is free for the corrected one; after that it is taken
    corrected = send_from_dept(env, tmp_path, "Gửi đúng", "1", "X")
    assert corrected.stdout.strip() == unknown.stdout.strip()
    args = ["send", "--from", DEPT, "--to", PC, "--subject", "Khác", "--number", "1", "--notation", "X"]
    again = docbus(env, *args, str(_file(tmp_path)), check=False)
    assert again.returncode == 1 and again.stdout == ""
    assert f"refused [number-in-use]: {corrected.stdout.strip()} was already sent on " in again.stderr
    docbus(env, "router", "run", "--idle-exit", "1.5")
    assert [i["subject"] for i in json.loads(docbus(env, "inbox", "--agency", PC, "--json").stdout)] == ["Gửi đúng"]


def test_send_takes_a_distribution_list_and_refuses_what_a_clerk_typed_wrong(env, tmp_path) -> None:
    set_up(env)
    empty = tmp_path / "scan.pdf"
    empty.write_bytes(b"")
    listed = tmp_path / "nhan.txt"
    listed.write_text(f"# Nơi nhận\n{PC}   # UBND tỉnh\n\n", encoding="utf-8")
    doubled = tmp_path / "trung.txt"
    doubled.write_text(f"{PC}\n{PC}, \n", encoding="utf-8")
    args = ["send", "--from", DEPT, "--subject", "Báo cáo", "--number", "3", "--notation", "BC"]
    twice = docbus(env, *args, "--to", f"{PC},{PC}", str(_file(tmp_path)), check=False)
    assert twice.returncode == 2 and f"{PC} is named more than once" in twice.stderr
    listed_twice = docbus(env, *args, "--to", f"@{doubled}", str(_file(tmp_path)), check=False)
    assert listed_twice.returncode == 2 and f"{PC} is named more than once" in listed_twice.stderr
    blank = docbus(env, *args, "--to", PC, str(empty), check=False)
    assert blank.returncode == 2 and "scan.pdf is empty (0 bytes)" in blank.stderr
    scan = _file(tmp_path)
    same_file = docbus(env, *args, "--to", PC, str(scan), str(tmp_path / "." / scan.name), check=False)
    assert same_file.returncode == 2 and "x.pdf is named more than once" in same_file.stderr
    assert "Traceback" not in twice.stderr + listed_twice.stderr + blank.stderr + same_file.stderr
    docbus(env, "router", "run", "--idle-exit", "1.5")
    assert json.loads(docbus(env, "inbox", "--agency", PC, "--json").stdout) == []  # nothing left

    sent = docbus(env, *args, "--to", f"@{listed}", str(_file(tmp_path))).stdout.strip()
    docbus(env, "router", "run", "--idle-exit", "1.5")
    assert [i["document_id"] for i in json.loads(docbus(env, "inbox", "--agency", PC, "--json").stdout)] == [sent]


def test_a_system_without_edxml_sends_through_the_pickup_folder(env, tmp_path) -> None:
    set_up(env)
    pickup = tmp_path / "pickup"
    pickup.mkdir()
    (pickup / "Tờ trình.pdf").write_bytes(b"%PDF-1.4 to trinh")
    header = {"to": [PC], "subject": "Tờ trình kế hoạch", "number": "7", "notation": "TTr-SNV"}
    header["files"] = ["Tờ trình.pdf"]
    (pickup / "tt7.send.json").write_text(json.dumps(header, ensure_ascii=False), encoding="utf-8")
    (pickup / "sai.send.json").write_text(json.dumps(header | {"number": ""}), encoding="utf-8")
    run = docbus(env, "adapter", "run", "--agency", DEPT, "--idle-exit", "1", "--pickup", str(pickup))
    sent = json.loads((pickup / "sent" / "tt7" / "result.json").read_text(encoding="utf-8"))
    assert f"sent tt7: {sent['document_id']}" in run.stdout and sent["published"] is True
    assert 'refused sai [bad-job]: "number" may not be empty' in run.stdout
    assert (pickup / "refused" / "sai" / "sai.send.json").is_file()

    docbus(env, "router", "run", "--idle-exit", "1.5")
    drop = tmp_path / "drop"
    docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1", "--drop", str(drop))
    [received] = [json.loads(f.read_text(encoding="utf-8")) for f in drop.glob("*.json")]
    assert (received["document_id"], received["subject"]) == (sent["document_id"], "Tờ trình kế hoạch")
    assert (drop / received["attachments"][0]["file"]).read_bytes() == b"%PDF-1.4 to trinh"

    answers = tmp_path / "pc-pickup"  # the People's Committee's system answers 03 the same way
    answers.mkdir()
    answer = {"document_id": sent["document_id"], "code": "03", "description": "Đã vào sổ văn bản đến"}
    (answers / "tt7-03.status.json").write_text(json.dumps(answer, ensure_ascii=False), encoding="utf-8")
    run = docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1", "--pickup", str(answers))
    assert f"sent tt7-03: status 03 for {sent['document_id']}" in run.stdout
    docbus(env, "router", "run", "--idle-exit", "1.5")
    dept_drop = tmp_path / "dept-drop"
    back = docbus(env, "adapter", "run", "--agency", DEPT, "--idle-exit", "1", "--drop", str(dept_drop)).stdout
    assert f"status 03 from {PC}: {sent['document_id']} Đã vào sổ văn bản đến" in back
    assert f"receipt: {sent['document_id']} relayed by the data centre" in back
    receipt = json.loads((dept_drop / f"{sent['digest'][:16]}.receipt.json").read_text(encoding="utf-8"))
    assert (receipt["kind"], receipt["document_id"], receipt["digest"]) == (
        "receipt",
        sent["document_id"],
        sent["digest"],
    )


def test_adapter_run_hands_documents_to_a_drop_folder(env, tmp_path) -> None:
    set_up(env)
    sent = send_from_dept(env, tmp_path, "Báo cáo tháng", "2", "BC-SNV").stdout.strip()
    docbus(env, "router", "run", "--idle-exit", "1.5")
    drop = tmp_path / "drop"
    run = docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1", "--drop", str(drop))
    assert f"edoc from {DEPT}: {sent} Báo cáo tháng" in run.stdout
    files = list(drop.glob("*.edxml"))
    assert len(files) == 1 and "Báo cáo tháng".encode() in files[0].read_bytes()
    header = json.loads(files[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert (header["document_id"], header["subject"]) == (sent, "Báo cáo tháng")
    [att] = header["attachments"]
    assert (drop / att["file"]).read_bytes() == (tmp_path / att["name"]).read_bytes()  # the file as sent
    # the copy received through RabbitMQ carries the data centre's sealed TraceHeader
    [checked] = json.loads(docbus(env, "verify", "--json", str(files[0])).stdout)
    assert checked["ok"] and checked["signer"] == DEPT and len(checked["relayed"]) == 1
    docbus(env, "router", "run", "--idle-exit", "1.5")
    back = docbus(env, "adapter", "run", "--agency", DEPT, "--idle-exit", "1")
    assert f"status 01 from {PC}: {sent}" in back.stdout


def test_a_drop_folder_that_cannot_be_written_stops_the_adapter_and_loses_nothing(env, tmp_path) -> None:
    set_up(env)
    sent = send_from_dept(env, tmp_path, "Báo cáo quý", "3", "BC-SNV").stdout.strip()
    docbus(env, "router", "run", "--idle-exit", "1.5")
    unwritable = "/proc/docbus-drop"  # not even root may create a folder there
    broken = docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1", "--drop", unwritable, check=False)
    assert broken.returncode == 5 and "[hand-off-failed]" in broken.stderr and sent in broken.stderr
    assert "RabbitMQ" not in broken.stderr and "Traceback" not in broken.stderr  # not blamed on the broker
    drop = tmp_path / "drop"
    again = docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1", "--drop", str(drop))
    assert f"edoc from {DEPT}: {sent}" in again.stdout and len(list(drop.glob("*.edxml"))) == 1


@pytest.mark.parametrize(
    ("args", "stopped"),
    [(("router", "run"), "router stopped after 0 message(s)"), (("adapter", "run", "--agency", PC), "stopped after")],
)
def test_sigterm_stops_a_running_process_cleanly(env, args, stopped) -> None:
    """systemd stops services with SIGTERM; started from a script in the background, SIGINT is ignored."""
    set_up(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # printed once it is connected and consuming
        assert "consuming" in first, first
        time.sleep(1.0)  # connected and waiting
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=20) == 0
        assert stopped in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_names_what_needs_attention(env, tmp_path) -> None:
    before = docbus(env, "health", check=False)
    assert before.returncode == 3 and "run 'docbus init'" in before.stderr and "Traceback" not in before.stderr
    set_up(env)
    sent = send_from_dept(env, tmp_path, "Kiểm tra", "3", "KT").stdout.strip()
    idle = docbus(env, "health", check=False)
    assert idle.returncode == 5 and "no router is running" in idle.stdout and "Sở Nội vụ" in idle.stdout

    docbus(env, "router", "run", "--idle-exit", "1.5")  # delivered to PC, which has not taken it in
    late = docbus(env, "health", "--overdue-hours", "0", "--json", check=False)
    report = json.loads(late.stdout)
    pc = next(a for a in report["agencies"] if a["organ_id"] == PC)
    assert late.returncode == 5 and pc["not_taken"] == 1 and pc["oldest_hours"] is not None
    assert any(p.startswith(f"{PC} (UBND tỉnh Vĩnh Long) has not taken in 1") for p in report["problems"])
    assert json.loads(docbus(env, "health", "--json", check=False).stdout)["problems"] == [
        "no router is running: nothing sent is being delivered (start 'docbus router run')"
    ]  # not overdue yet at 24 h

    taken = docbus(env, "adapter", "run", "--agency", PC, "--idle-exit", "1")  # stores it and answers 01
    assert sent in taken.stdout
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for args in (("router", "run"), ("adapter", "run", "--agency", DEPT))
    ]
    try:
        deadline = time.monotonic() + 30  # the management API's figures lag by up to 5 s
        while True:
            now = docbus(env, "health", "--overdue-hours", "0", "--json", check=False)
            report = json.loads(now.stdout)
            dept = next(a for a in report["agencies"] if a["organ_id"] == DEPT)
            pc = next(a for a in report["agencies"] if a["organ_id"] == PC)
            if (report["routers"] == 1 and dept["connected"] and pc["not_taken"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert report["routers"] == 1 and dept["connected"] and not pc["connected"]
        assert pc["not_taken"] == 0 and now.returncode == 0 and report["problems"] == []
        assert "all well" in docbus(env, "health").stdout
    finally:
        for proc in running:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_demo_runs_end_to_end(env) -> None:
    proc = docbus(env, "demo")
    assert "demo OK" in proc.stdout
    assert "Quyết định ban hành Đề án 112" in proc.stdout
    assert "“Sao lục: Quyết định ban hành Quy chế gửi, nhận văn bản điện tử" in proc.stdout  # from the national axis


def send_from_dept(
    env, tmp_path: Path, subject: str, number: str, notation: str, *, to: str = PC
) -> subprocess.CompletedProcess[str]:
    """``docbus send`` of a one-file document from the department; prints its DocumentId."""
    return docbus(
        env,
        "send",
        "--from",
        DEPT,
        "--to",
        to,
        "--subject",
        subject,
        "--number",
        number,
        "--notation",
        notation,
        str(_file(tmp_path)),
    )


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "x.pdf"
    f.write_bytes(b"%PDF")
    return f


def test_the_peoples_committee_distributes_a_received_document_with_its_signed_original(env, tmp_path) -> None:
    """Sao lục: what reached the People's Committee goes on to a district under the Committee's
    own number, and the district can still check the issuing department's signature."""
    set_up(env)
    docbus(env, "agency", "add", DISTRICT, "UBND huyện Long Hồ", "--parent", PC)
    original = send_from_dept(env, tmp_path, "Quyết định ban hành quy chế", "5", "QĐ-SNV").stdout.strip()
    docbus(env, "router", "run", "--idle-exit", "1.5")
    docbus(env, "inbox", "--agency", PC)  # taken in, answered 01
    cover = tmp_path / "cong-van-sao-luc.pdf"
    cover.write_bytes(b"%PDF-1.4 sao luc")
    args = ["distribute", "--from", PC, "--to", DISTRICT, "--number", "12", "--notation", "SL-UBND"]
    copy = docbus(env, *args, original, str(cover)).stdout.strip()
    assert copy.startswith(f"{PC},") and copy.endswith(",12/SL-UBND")
    again = docbus(env, *args, original, check=False)  # the copy's number is the Committee's own
    assert again.returncode == 1 and "refused [number-in-use]" in again.stderr
    absent = docbus(env, *args[:-1], "SL-2", "000.00.01.H61,2020/01/01,1/X", check=False)
    assert absent.returncode == 3 and "is not in the inbox of 000.00.00.H61" in absent.stderr

    docbus(env, "router", "run", "--idle-exit", "1.5")
    [got] = json.loads(docbus(env, "inbox", "--agency", DISTRICT, "--json").stdout)
    assert (got["document_id"], got["sender"], got["subject"]) == (copy, PC, "Sao lục: Quyết định ban hành quy chế")
    folder = tmp_path / "huyen"
    saved = [Path(f) for f in docbus(env, "inbox", "save", "--agency", DISTRICT, copy, str(folder)).stdout.split()]
    assert [f.name for f in saved] == ["cong-van-sao-luc.pdf", "x.pdf", "ban-goc.edxml"]
    checked = docbus(env, "verify", str(folder / "ban-goc.edxml"))
    assert f"edoc {original} signed by {DEPT}" in checked.stdout and "relayed by the data centre" in checked.stdout


def test_a_central_document_from_outside_the_bus_is_distributed_flagged_unverified(env, tmp_path) -> None:
    """Sao lục of what came over the national axis: the Government Office's công văn (a real
    sample, placeholder signature) goes to a department under the Committee's number."""
    from tests.conftest import interop_files

    original = next(f for f in interop_files() if "xml-dc0bdef0" in f.name)
    set_up(env)
    args = ["distribute", "--from", PC, "--to", DEPT, "--number", "21", "--notation", "SL-UBND"]
    missing = docbus(env, *args, check=False)
    assert missing.returncode == 2 and "DOCUMENT_ID of a received document, or --original FILE" in missing.stderr
    status = next(f for f in interop_files() if "status_inbox_01" in f.name)
    refused = docbus(env, *args, "--original", str(status), check=False)
    assert refused.returncode == 1 and "not-edoc" in refused.stderr and "Traceback" not in refused.stderr
    copy = docbus(env, *args, "--original", str(original)).stdout.strip()
    assert copy.endswith(",21/SL-UBND")

    docbus(env, "router", "run", "--idle-exit", "1.5")
    [got] = json.loads(docbus(env, "inbox", "--agency", DEPT, "--json").stdout)
    assert got["subject"] == "Sao lục: V/v kết nối, liên thông phần mềm quản lý văn bản"
    folder = tmp_path / "so"
    saved = [Path(f) for f in docbus(env, "inbox", "save", "--agency", DEPT, copy, str(folder)).stdout.split()]
    assert [f.name for f in saved] == ["1896_QD-TTg_m_294779.doc", "ban-goc.edxml"]
    assert (folder / "ban-goc.edxml").read_bytes() == original.read_bytes()
    checked = docbus(env, "verify", str(folder / "ban-goc.edxml"), check=False)
    assert checked.returncode == 1 and "signature-unverifiable" in checked.stdout + checked.stderr
