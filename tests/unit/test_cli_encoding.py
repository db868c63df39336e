"""Text in another encoding than UTF-8: a usage error naming the option, or a refusal
naming the file.

A terminal, a script or a Windows share still writing Vietnamese in TCVN3, VNI or
Windows-1258 hands docbus bytes that are not UTF-8; Python passes them on as lone
surrogates, which SQLite, XML and JSON all refuse, each with a traceback of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adapters import Adapter
from bus.edxml import not_utf8
from bus.errors import NotFound, Refused
from cli import LIST_FILE_BYTES, TextCheckedCommand, TextCheckedGroup, _distribution_list, main
from tests.unit.test_cli_help import _commands

CP1258_CONG_VAN = os.fsdecode("Công văn".encode("cp1258"))  # as a Windows-1258 terminal sends it


def test_every_command_checks_its_text() -> None:
    unchecked = [
        " ".join(path) for path, cmd in _commands(main) if not isinstance(cmd, TextCheckedCommand | TextCheckedGroup)
    ]
    assert unchecked == []


def test_the_byte_that_is_not_utf8_is_named() -> None:
    assert not_utf8("Công văn") == ""
    assert not_utf8(CP1258_CONG_VAN) == "0xF4"  # ô in Windows-1258, alone where UTF-8 wants two bytes
    assert not_utf8("a\ud800") == "U+D800"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["trace", CP1258_CONG_VAN], "DOCUMENT_ID"),
        (["archive", "search", "--from", "000.00.01.H61\udcff"], "--from"),
        (["archive", "search", "--text", CP1258_CONG_VAN], "--text"),
        (["status", "send", "--agency", "000.00.00.H61", "--code", "03", "x\udcffy"], "DOCUMENT_ID"),
        (["cert", "revoke", "000.00.01.H61", "--reason", CP1258_CONG_VAN], "--reason"),
    ],
)
def test_text_that_is_not_utf8_is_a_usage_error_naming_the_option(tmp_path, args, named) -> None:
    out = CliRunner().invoke(main, args, env={"DOCBUS_HOME": str(tmp_path)})
    assert out.exit_code == 2, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert f"Invalid value for '{named}'" in out.output and "is not UTF-8 text (it holds 0x" in out.output


def test_send_refuses_a_number_in_another_encoding_before_anything_is_signed(tmp_path) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(b"%PDF-1.4 scan")
    args = ["send", "--from", "000.00.01.H61", "--to", "000.00.00.H61", "--subject", CP1258_CONG_VAN]
    out = CliRunner().invoke(
        main, [*args, "--number", "12", "--notation", "SNV", str(scan)], env={"DOCBUS_HOME": str(tmp_path)}
    )
    assert out.exit_code == 2 and "'--subject'" in out.output and "0xF4" in out.output
    assert not (tmp_path / "agencies").exists()  # nothing was opened, let alone signed


def test_a_file_name_in_another_encoding_is_left_to_the_file_system(tmp_path) -> None:
    """File names are the system's: a scan whose name a Windows share wrote in Windows-1258
    is still read (the check is on text, not on paths)."""
    name = tmp_path / os.fsdecode("Công văn.edxml".encode("cp1258"))
    name.write_bytes(b"<not-edxml/>")
    out = CliRunner().invoke(main, ["inspect", str(name)], env={"DOCBUS_HOME": str(tmp_path)})
    assert "not UTF-8 text" not in out.output
    assert out.exit_code in (1, 3) and (out.exception is None or isinstance(out.exception, SystemExit)), out.output


def test_a_file_whose_name_is_not_utf8_is_refused_before_anything_is_signed(memory_province, tmp_path) -> None:
    """Its name would travel in the edXML as text: the clerk is told to rename it."""
    p = memory_province
    scan = tmp_path / os.fsdecode("Công văn.pdf".encode("cp1258"))
    scan.write_bytes(b"%PDF-1.4 scan")
    with Adapter(p.settings, "000.00.01.H61", transport=p.transport) as dept:
        with pytest.raises(Refused) as refused:
            dept.send(["000.00.00.H61"], subject="Công văn", number="12", notation="SNV", files=[scan])
        assert dept.store.Outbox.select().count() == 0
    assert refused.value.reason == "file-name-encoding"
    assert "'C�ng v�n.pdf' is not UTF-8 (it holds 0xF4)" in refused.value.message


def test_a_list_file_notepad_saved_as_unicode_is_read_and_one_in_windows_1258_is_named(tmp_path) -> None:
    """Distribution lists and lists of days off are kept by clerks, often in Notepad: its
    "Unicode" (UTF-16 with a byte-order mark) and "UTF-8" (with one) are read; its "ANSI"
    (Windows-1258 here) is refused naming the byte; a device or a huge file is not read."""
    listed = "000.00.01.H61  # Sở Nội vụ\r\n\r\n000.00.02.H61, 000.00.11.H61\r\n"
    for encoding in ("utf-16", "utf-8-sig", "utf-8"):
        path = tmp_path / f"cac-so-{encoding}.txt"
        path.write_bytes(listed.encode(encoding))
        assert _distribution_list(path) == "000.00.01.H61,000.00.02.H61,000.00.11.H61", encoding
    ansi = tmp_path / "cac-so-ansi.txt"
    ansi.write_bytes("000.00.01.H61  # Sơn La\r\n".encode("cp1258"))
    with pytest.raises(click.BadParameter, match=r"is not UTF-8 text \(byte 0xf5 at 18\): save it as UTF-8"):
        _distribution_list(ansi)
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as fh:
        fh.truncate(LIST_FILE_BYTES + 1)
    for path, words in ((Path("/dev/zero"), "not a regular file"), (huge, "is over 1 MiB")):
        with pytest.raises(click.BadParameter, match=words):
            _distribution_list(path)


def test_the_python_api_treats_text_that_is_not_utf8_as_naming_nothing(memory_province, tmp_path) -> None:
    """An agency's program may pass such text too: a lookup finds nothing (no stored DocumentId
    can hold it) and what would be signed is refused, instead of the local store's traceback."""
    p = memory_province
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(b"%PDF-1.4 scan")
    odd = "000.00.00.H61,2026/11/28,1/N\udcff"
    with Adapter(p.settings, "000.00.01.H61", transport=p.transport) as dept:
        with pytest.raises(NotFound):
            dept.document(odd)
        assert dept.sent(document_id=odd) == [] and dept.answered(odd, "03") is None
        assert dept.number_in_use("1\udcff", "N") is None
        with pytest.raises(Refused) as status:
            dept.send_status(odd, "000.00.00.H61", "03")
        with pytest.raises(Refused) as edoc:
            dept.send(["000.00.00.H61"], subject="S", number="1\udcff", notation="N", files=[scan])
        assert status.value.reason == edoc.value.reason == "not-xml-text"
        assert dept.store.Outbox.select().count() == 0
