"""docbus inspect / verify on files, and one-line errors with meaningful exit codes."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bus import edxml
from cli import main
from tests.conftest import interop_files
from tests.helpers import signed_edoc

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def sample(name: str) -> Path:
    return next(f for f in interop_files() if name in f.name)


def test_inspect_json_has_the_header_fields() -> None:
    res = run(["inspect", "--json", str(sample("xml-dc0bdef0"))])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kind"] == "edoc"
    assert data["document_id"] == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert data["from"] == {"organ_id": "000.00.00.G22", "name": "Văn phòng Chính phủ"}
    assert [t["organ_id"] for t in data["to"]] == ["000.00.00.H41", "000.00.00.H14", "000.00.00.G17"]
    assert data["code"] == {"number": "7816", "notation": "VPCP-TTĐT"}
    assert data["priority"] == 0 and data["status_code"] is None
    assert data["signature"] in {"present", "placeholder"}
    att = data["attachments"][0]
    assert set(att) >= {"content_id", "name", "content_type", "size", "sha256"} and len(att["sha256"]) == 64


def test_inspect_status_json() -> None:
    data = json.loads(run(["inspect", "--json", str(sample("status_acceptance_03"))]).output)
    assert data["kind"] == "status" and data["status_code"] == "03" and data["signature"] == "absent"


def test_inspect_table_keeps_diacritics() -> None:
    res = run(["inspect", str(sample("vnpt-example__resources-edoc_new"))])
    assert res.exit_code == 0
    assert "V/v kết nối, liên thông phần mềm quản lý văn bản" in res.output


def test_inspect_malformed_file_is_one_line_and_nonzero() -> None:
    res = CliRunner().invoke(main, ["inspect", str(sample("vnpt-example__resources-edoc.edxml"))])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "malformed" in lines[0] and "line" in lines[0]


def test_verify_shows_when_the_data_centre_relayed_a_received_copy(memory_province, tmp_path) -> None:
    """A recipient's copy carries the hub's sealed TraceHeader: verify shows the relay time,
    and refuses the copy once that time is altered."""
    from bus.envelope import append_hub_trace
    from tests.helpers import hub_seal

    s = memory_province.settings
    data = signed_edoc(s, "000.00.01.H61", ["000.00.00.H61"])
    at = edxml.now_vn().replace(microsecond=0) + dt.timedelta(seconds=1)
    stamp = edxml.fmt_timestamp(at)
    received = tmp_path / "received.edxml"
    received.write_bytes(append_hub_trace(data, hub_seal(s), at))
    env = {"DOCBUS_HOME": str(s.home)}
    ok = run(["verify", str(received)], env)
    assert ok.exit_code == 0 and f"relayed by the data centre {stamp} (sealed)" in ok.output
    assert json.loads(run(["verify", "--json", str(received)], env).output)[0]["relayed"] == [stamp]
    # the hub's sealed TraceHeader is no part of the sender's edXML: inspect reads the copy as its recipient does
    assert json.loads(run(["inspect", "--json", str(received)], env).output)["schema"]["strict"] == "valid"
    cut = received.read_bytes().rindex(stamp.encode())  # the hub's, not the sender's of the same second
    later = edxml.fmt_timestamp(at + dt.timedelta(seconds=2)).encode()
    received.write_bytes(received.read_bytes()[:cut] + later + received.read_bytes()[cut + len(stamp) :])
    bad = CliRunner().invoke(main, ["verify", str(received)], env=env)
    assert bad.exit_code == 1 and "[trace-seal]" in bad.output


def test_verify_signed_file_and_refuse_tampered(memory_province, tmp_path) -> None:
    s = memory_province.settings
    good = tmp_path / "good.edxml"
    good.write_bytes(signed_edoc(s, "000.00.01.H61", ["000.00.00.H61"]))
    bad = tmp_path / "bad.edxml"
    bad.write_bytes(good.read_bytes().replace("kết nối".encode(), "kết lối".encode()))
    env = {"DOCBUS_HOME": str(s.home)}
    ok = run(["verify", str(good)], env)
    assert ok.exit_code == 0 and ok.output.startswith("OK")
    both = CliRunner().invoke(main, ["verify", str(good), str(bad)], env=env)
    assert both.exit_code == 1
    assert both.output.splitlines()[1].startswith("FAIL") and "[signature-invalid]" in both.output


def test_verify_reports_samples_as_not_verifiable(memory_province) -> None:
    env = {"DOCBUS_HOME": str(memory_province.settings.home)}
    res = CliRunner().invoke(
        main, ["verify", str(sample("resources-edoc_new")), str(sample("status_inbox_01"))], env=env
    )
    assert res.exit_code == 1
    assert "[signature-unverifiable]" in res.output and "[signature-absent]" in res.output


def test_unreachable_broker_is_one_clear_line_without_traceback(tmp_path) -> None:
    env = dict(os.environ, DOCBUS_AMQP_URL="amqp://guest:secret@127.0.0.1:1/%2F", DOCBUS_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 4
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "amqp://guest:***@127.0.0.1:1/%2F" in lines[0] and "rabbitmq-server" in lines[0] and "secret" not in lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DOCBUS_AMQP_URL", "amqp://guest:s3cret@:::", "DOCBUS_AMQP_URL is not a URL docbus can use"),
        ("DOCBUS_AMQP_URL", "http://guest:s3cret@127.0.0.1/", "'http://guest:***@127.0.0.1/' is not an AMQP URL"),
        ("DOCBUS_MAX_AGE_HOURS", "một tuần", "DOCBUS_MAX_AGE_HOURS 'một tuần' is not a number of hours above 0"),
        ("DOCBUS_MAX_AGE_HOURS", "0", "is not a number of hours above 0"),
        ("DOCBUS_NAMESPACE", "tỉnh vĩnh long", "DOCBUS_NAMESPACE 'tỉnh vĩnh long': letters, digits"),
        ("DOCBUS_HOME", "/etc/hostname", "DOCBUS_HOME '/etc/hostname' is a file, not a folder"),
        ("DOCBUS_HUB_ID", "trung-tam", "DOCBUS_HUB_ID 'trung-tam' is not a QCVN 102:2016 OrganId"),
    ],
)
def test_a_setting_it_cannot_use_is_one_line_before_anything_connects(tmp_path, variable, value, expected) -> None:
    env = dict(os.environ, DOCBUS_HOME=str(tmp_path / "home")) | {variable: value}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1 and lines[0].startswith("docbus: ")
    assert expected in proc.stderr and "s3cret" not in proc.stderr
    assert not (tmp_path / "home").exists()  # nothing was created


def test_not_set_up_is_exit_3(tmp_path) -> None:
    res = CliRunner().invoke(main, ["verify", str(sample("status_inbox_01"))], env={"DOCBUS_HOME": str(tmp_path)})
    assert res.exit_code == 3 and "docbus init" in res.output


def test_a_file_name_xml_cannot_carry_is_one_line_and_nothing_is_queued(memory_province, tmp_path) -> None:
    """A file on disk may be named with a control character; an edXML envelope cannot carry it."""
    s = memory_province.settings
    odd = tmp_path / "to\x07trinh.pdf"
    odd.write_bytes(b"%PDF-1.4\n%%EOF\n")
    env = {"DOCBUS_HOME": str(s.home), "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    args = ["send", "--from", "000.00.01.H61", "--to", "000.00.00.H61", "--subject", "Tờ trình", "--number", "9"]
    res = CliRunner().invoke(main, [*args, "--notation", "X", str(odd)], env=env)
    assert res.exit_code == 1
    assert "[not-xml-text]" in res.output and "U+0007" in res.output and "to\\x07trinh.pdf" in res.output
    from adapters.store import open_store

    store = open_store(s.agency_home("000.00.01.H61") / "store.db")
    assert store.Outbox.select().count() == 0  # refused before the outbox: nothing to send later
    store.close()


def test_a_file_to_send_that_is_not_a_regular_file_is_named_so(memory_province, tmp_path) -> None:
    """A pipe or a device is not "missing": the clerk is told what the path is instead."""
    env = {"DOCBUS_HOME": str(memory_province.settings.home), "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    args = ["send", "--from", "000.00.01.H61", "--to", "000.00.00.H61", "--subject", "Tờ trình", "--number", "9"]
    pipe = tmp_path / "to-trinh.pdf"
    os.mkfifo(pipe)
    for path, code, words in (
        (pipe, 1, "[not-a-file]: attachment"),
        (Path("/dev/null"), 1, "is not a regular file"),
        (tmp_path / "missing.pdf", 3, "missing.pdf does not exist"),
    ):
        res = CliRunner().invoke(main, [*args, "--notation", "X", str(path)], env=env)
        assert res.exit_code == code and words in res.output, res.output


def test_inspect_and_verify_read_only_regular_files_and_no_more_than_the_bound(memory_province, tmp_path) -> None:
    """``/dev/zero`` or a pipe would be read for ever; a file over the bound is refused
    before it is read.  ``verify`` goes on with the other files."""
    s = memory_province.settings
    env = {"DOCBUS_HOME": str(s.home)}
    pipe = tmp_path / "cong-van.edxml"
    os.mkfifo(pipe)
    huge = tmp_path / "huge.edxml"
    with huge.open("wb") as fh:  # sparse: no disk taken
        fh.truncate(256 * 1024 * 1024 + 1)
    good = tmp_path / "good.edxml"
    good.write_bytes(signed_edoc(s, "000.00.01.H61", ["000.00.00.H61"]))
    for path, words in ((Path("/dev/zero"), "[not-a-file]"), (pipe, "[not-a-file]"), (huge, "[too-large]")):
        res = CliRunner().invoke(main, ["inspect", str(path)], env=env)
        assert res.exit_code == 1 and words in res.output, res.output
    res = CliRunner().invoke(main, ["verify", "/dev/zero", str(huge), str(good)], env=env)
    lines = res.output.splitlines()
    assert res.exit_code == 1 and len(lines) == 3, res.output
    assert "[not-a-file]" in lines[0] and "[too-large]" in lines[1] and lines[2].startswith("OK")


def test_send_refuses_an_empty_subject_or_recipient_list_as_usage(memory_province) -> None:
    env = {"DOCBUS_HOME": str(memory_province.settings.home)}
    base = ["send", "--from", "000.00.01.H61", "--notation", "X", "--number", "1"]
    empty_to = CliRunner().invoke(main, [*base, "--to", " , ", "--subject", "Tờ trình"], env=env)
    assert empty_to.exit_code == 2 and "at least one OrganId" in empty_to.output
    blank = CliRunner().invoke(main, [*base, "--to", "000.00.00.H61", "--subject", "  "], env=env)
    assert blank.exit_code == 2 and "'--subject': may not be empty" in blank.output


def test_registering_an_agency_under_a_code_not_in_qcvn_form_is_a_usage_error(tmp_path) -> None:
    res = CliRunner().invoke(main, ["agency", "add", "12345", "Sở Mới"], env={"DOCBUS_HOME": str(tmp_path)})
    assert res.exit_code == 2 and "'12345' is not a QCVN 102:2016 OrganId" in res.output
    assert not (tmp_path / "agencies").exists()  # checked before anything is set up or issued


def test_the_adapter_refuses_before_the_outbox_what_the_router_would_refuse_for_its_shape(memory_province) -> None:
    import pytest

    from adapters import Adapter
    from bus.edxml import Attachment
    from bus.errors import PolicyRefusal, SchemaViolation
    from bus.topology import Names

    p = memory_province
    with Adapter(p.settings, "000.00.01.H61", transport=p.transport) as dept:
        pdf = Attachment.from_bytes("to-trinh.pdf", b"%PDF-1.4", "application/pdf")
        with pytest.raises(SchemaViolation, match=r"not sent, the bus would refuse it: .*'CodeNumber'.*minLength"):
            dept.send(["000.00.00.H61"], subject="Tờ trình", number="", notation="X", files=[pdf])
        with pytest.raises(SchemaViolation, match=r"not sent, the bus would refuse it: .*Expected is one of .*To"):
            dept.send([], subject="Tờ trình", number="1", notation="X", files=[pdf])
        with pytest.raises(PolicyRefusal, match="not sent: document is marked 'Tối mật'") as secret:
            dept.send(
                ["000.00.00.H61"], subject="Tờ trình", number="2", notation="X", files=[pdf], security_level="Tối mật"
            )
        assert secret.value.reason == "secret-document"  # never signed, never on the network
        assert dept.pending() == 0 and dept.store.Outbox.select().count() == 0
    names = Names(p.settings.namespace)
    assert not any(p.transport.queues.get(q) for q in (names.router_queue, names.router_urgent))  # nothing published


def test_verify_at_a_time_before_a_revocation_accepts_what_was_signed_then(
    memory_province, tmp_path, monkeypatch
) -> None:
    import datetime as dt

    from bus import province
    from bus.edxml import VN_TZ

    p = memory_province
    signed = tmp_path / "signed.edxml"
    signed.write_bytes(signed_edoc(p.settings, "000.00.01.H61", ["000.00.00.H61"]))
    now = dt.datetime.now(VN_TZ)
    revoked_at = now.astimezone(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=30)
    monkeypatch.setattr(province, "utcnow", lambda: revoked_at)  # the key is reported lost half an hour on
    province.revoke(p.settings, p.archive, "000.00.01.H61", "lộ khóa", None)
    env = {"DOCBUS_HOME": str(p.settings.home)}
    today = run(["verify", str(signed)], env)
    assert today.exit_code == 1 and "[cert-revoked]" in today.output
    before = run(["verify", "--at", f"{now + dt.timedelta(minutes=10):%Y-%m-%d %H:%M}", str(signed)], env)
    assert before.exit_code == 0 and before.output.startswith("OK"), before.output
    after = run(["verify", "--at", f"{now + dt.timedelta(minutes=40):%Y-%m-%d %H:%M}", str(signed)], env)
    assert after.exit_code == 1 and "[cert-revoked]" in after.output


def test_agency_list_reads_as_the_tree_and_writes_a_distribution_list_for_a_district(memory_province, tmp_path) -> None:
    from bus import province

    p = memory_province
    s = p.settings
    for code, name, parent in [
        ("000.00.11.H61", "UBND huyện Long Hồ", "000.00.00.H61"),
        ("000.11.02.H61", "UBND xã Lộc Hòa", "000.00.11.H61"),
        ("000.11.01.H61", "UBND xã Phú Quới", "000.00.11.H61"),
        ("000.11.03.H61", "UBND xã Tân Hạnh", "000.00.11.H61"),
    ]:
        province.add_agency(s, p.archive, p.transport, code, name, parent)
    province.set_enabled(s, p.archive, "000.11.03.H61", False)
    env = {"DOCBUS_HOME": str(s.home), "DOCBUS_NAMESPACE": s.namespace}
    listed = json.loads(CliRunner().invoke(main, ["agency", "list", "--json"], env=env).output)
    assert [(r["organ_id"], r["depth"]) for r in listed] == [
        ("000.00.00.H61", 0),
        ("000.00.01.H61", 1),
        ("000.00.02.H61", 1),
        ("000.00.11.H61", 1),
        ("000.11.01.H61", 2),
        ("000.11.02.H61", 2),
        ("000.11.03.H61", 2),
    ]
    codes = CliRunner().invoke(main, ["agency", "list", "--under", "000.00.11.H61", "--codes"], env=env).output
    assert codes.splitlines() == [
        "# 2 enabled agencies below 000.00.11.H61 (docbus agency list --codes)",
        "000.11.01.H61  # UBND xã Phú Quới",
        "000.11.02.H61  # UBND xã Lộc Hòa",
    ]
    from cli import _distribution_list

    (tmp_path / "xa.txt").write_text(codes, encoding="utf-8")
    assert _distribution_list(tmp_path / "xa.txt") == "000.11.01.H61,000.11.02.H61"  # what `send --to @FILE` reads
    unknown = CliRunner().invoke(main, ["agency", "list", "--under", "000.00.77.H61"], env=env)
    assert unknown.exit_code == 3 and "no agency '000.00.77.H61'" in unknown.output


def test_inspect_shows_the_content_wrapped_and_json_keeps_all_of_it(tmp_path) -> None:
    from tests.helpers import edoc

    msg = edoc("000.00.00.H61", ["000.00.01.H61"], subject="Kế hoạch chuyển đổi số")
    msg.content = "Triển khai kế hoạch chuyển đổi số năm 2027 của tỉnh Vĩnh Long. " * 40
    path = tmp_path / "ke-hoach.edxml"
    path.write_bytes(edxml.build(msg))
    lines = run(["inspect", str(path)]).output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("content  "))
    content = [lines[start]] + [ln for ln in lines[start + 1 : start + 12] if ln.startswith(" " * 9)]
    assert content[0].startswith("content  Triển khai kế hoạch chuyển đổi số năm 2027")
    assert len(content) == 10 and content[-1].endswith(" …")  # cut; --json has it whole
    assert json.loads(run(["inspect", "--json", str(path)]).output)["content"] == msg.content.strip()


def test_a_reader_that_goes_away_stops_the_output_quietly(tmp_path) -> None:
    """`docbus … | head`: exit 141 as a shell reports a broken pipe, no error on stderr."""
    from tests.helpers import edoc

    path = tmp_path / "cv.edxml"
    path.write_bytes(edxml.build(edoc("000.00.00.H61", ["000.00.01.H61"])))
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "inspect", str(path)],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == b""
