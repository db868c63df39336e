"""A damaged archive or local store gets one clear line and exit 3, never a traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from peewee import DatabaseError

from cli import EXIT_CONFIG, guarded, main

DEPT = "000.00.01.H61"
NOT_A_DATABASE = b"docbus: these bytes are not SQLite" * 100


def env_for(home) -> dict[str, str]:
    return {
        "DOCBUS_HOME": str(home),
        "DOCBUS_NAMESPACE": "mem",
        "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
    }


def test_a_damaged_archive_is_named_with_exit_3(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "archive.db").write_bytes(NOT_A_DATABASE)
    for args in (["archive", "search", "--text", "cong van"], ["health"], ["agency", "list"]):
        result = CliRunner().invoke(main, args, env=env_for(home))
        assert result.exit_code == EXIT_CONFIG, (args, result.output)
        assert f"cannot open the archive database sqlite:///{home / 'archive.db'}: file is not a database" in (
            result.output
        )
        assert "Traceback" not in result.output
    assert (home / "archive.db").read_bytes() == NOT_A_DATABASE  # left as it was, for whoever restores it


def test_a_damaged_agency_store_is_named_with_exit_3(memory_province) -> None:
    store = memory_province.settings.agency_home(DEPT) / "store.db"
    store.write_bytes(NOT_A_DATABASE)
    for args in (["sent", "--agency", DEPT], ["inbox", "--agency", DEPT, "--json"]):
        result = CliRunner().invoke(main, args, env=env_for(memory_province.settings.home))
        assert result.exit_code == EXIT_CONFIG, (args, result.output)
        assert f"cannot open the agency's local store {store}: file is not a database" in result.output
        assert "Traceback" not in result.output


def test_a_database_failing_mid_command_is_one_line(capsys) -> None:
    @guarded
    def archive_something() -> None:
        raise DatabaseError("database disk image is\nmalformed")

    with pytest.raises(SystemExit) as stopped:
        archive_something()
    assert stopped.value.code == EXIT_CONFIG
    assert capsys.readouterr().err == "docbus: database error: database disk image is malformed\n"


def test_the_guard_leaves_usage_errors_to_click() -> None:
    @click.command()
    @guarded
    def cmd() -> None:
        raise click.UsageError("wrong")

    assert CliRunner().invoke(cmd, []).exit_code == 2
