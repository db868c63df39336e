"""Values the code under an option cannot hold are usage errors naming the option.

SQLite binds 64-bit integers, Python's dates end in 9999 (and a Vietnamese day starts seven
hours before its UTC midnight, so 0001-01-01 has no start), AMQP's prefetch is 16 bits, and
``nan`` passes every comparison of a range: each of these ended in a traceback before.  An
agency is named by a QCVN OrganId, the only form the bus registers.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["inbox", "--agency", "000.00.01.H61", "--no-fetch", "--last", HUGE], "'--last'"),
        (["archive", "search", "--page", HUGE], "'--page'"),
        (["dead", "show", HUGE], "'LETTER_ID'"),
        (["health", "--overdue-hours", "nan"], "'--overdue-hours'"),
        (["health", "--overdue-hours", "inf"], "'--overdue-hours'"),
        (["health", "--days", HUGE], "'--days'"),
        (["cert", "rotate", "000.00.01.H61", "--overlap-days", "nan"], "'--overlap-days'"),
        (["router", "run", "--prefetch", "70000"], "'--prefetch'"),
        (["bench", "--rate", "nan"], "'--rate'"),
        (["archive", "search", "--since", "0001-01-01"], "--since"),
        (["archive", "search", "--until", "9999-12-31"], "--until"),
        (["sent", "--agency", "000.00.01.H61", "--no-fetch", "--since", "0001-01-01"], "--since"),
        (["report", "monthly", "--month", "9999-12"], "--month"),
        (["report", "monthly", "--month", "0001-01"], "--month"),
    ],
)
def test_a_value_past_the_bounds_is_a_usage_error(memory_province, args, named) -> None:
    env = {"DOCBUS_HOME": str(memory_province.settings.home), "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    out = CliRunner().invoke(main, args, env=env)
    assert out.exit_code == 2, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert f"Invalid value for {named}" in out.output


def test_the_days_at_the_bounds_still_work(memory_province) -> None:
    env = {"DOCBUS_HOME": str(memory_province.settings.home)}
    for args in (
        ["archive", "search", "--since", "1900-01-01", "--until", "9998-12-31"],
        ["report", "monthly", "--month", "9998-12"],
    ):
        out = CliRunner().invoke(main, args, env=env)
        assert out.exit_code == 0, out.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["inbox", "--agency", "", "--no-fetch"], "'--agency'"),
        (["sent", "--agency", "x" * 1000, "--no-fetch"], "'--agency'"),  # was: "File name too long"
        (["adapter", "run", "--agency", "../000.00.01.H61"], "'--agency'"),
        (
            ["send", "--from", "UBND", "--to", "000.00.00.H61", "--subject", "S", "--number", "1", "--notation", "N"],
            "'--from'",
        ),
        (["cert", "revoke", "000.00.01.H61", "--reason", "  "], "'--reason'"),  # a revocation says why
    ],
)
def test_an_agency_is_named_by_its_organid_and_a_revocation_by_its_reason(memory_province, args, named) -> None:
    env = {"DOCBUS_HOME": str(memory_province.settings.home), "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    out = CliRunner().invoke(main, args, env=env)
    assert out.exit_code == 2 and f"Invalid value for {named}" in out.output, out.output
    assert len(out.output) < 500  # a long value is cut short in the message
