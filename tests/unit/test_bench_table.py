"""`docbus bench` prints every figure of a full run whole: a table cell is cut at 60 characters."""

from __future__ import annotations

from click.testing import CliRunner

from benchmarks import bus_bench
from benchmarks.bus_bench import rows, shortfalls
from cli import main, table

FULL_RUN = {  # the shape `docbus bench --json` reports for a full run (docs/performance-history.md, run M)
    "machine": {"cpus": 2, "python": "3.11.7", "platform": "Linux", "rsa2048_sign_ms": 0.3},
    "envelope_bytes_avg": 5391,
    "raw_relay": {
        "messages": 20000,
        "relayed": 20000,
        "seconds": 1.55,
        "msgs_per_s": 12876.1,
        "cpu_ms_per_msg": {"relay": 0.052, "RabbitMQ": 0.081},
    },
    "router": {
        "documents": 20000,
        "delivered": 20000,
        "workers": 3,
        "seconds": 11.61,
        "docs_per_s": 1723.0,
        "router_peak_rss_mib": [70.5, 70.7, 70.9],
        "cpu_ms_per_doc": {"routers": 1.097, "RabbitMQ": 0.211},
        "cpu_busy_pct": 89.4,
        "receipts_after_s": 0.116,
    },
    "router_vs_relay": 0.134,
    "budget": {
        "cores": 2,
        "half_relay_ms_per_doc": 0.311,
        "checks_floor_ms_per_doc": {
            "parse": 0.014,
            "schema": 0.005,
            "digest": 0.009,
            "signature": 0.018,
            "signed_tree": 0.008,
            "archive": 0.016,
            "total": 0.0701,
        },
        "least_ms_per_doc": 0.203,
    },
    "latency": {
        "offered_per_s": 200.0,
        "achieved_per_s": 200.0,
        "senders": 4,
        "workers": 1,
        "documents": 2000,
        "stored": 2000,
        "left_in_outbox": 0,
        "cpu_ms_per_doc": {"routers": 2.72, "recipient": 1.98, "RabbitMQ": 2.03, "senders": 1.71},
        "cpu_busy_pct": 87.0,
        "broker_peak_pct": 45.8,
        "n": 2000,
        "p50_ms": 29.82,
        "p95_ms": 49.44,
        "p99_ms": 75.74,
        "mean_ms": 31.66,
        "max_ms": 97.5,
    },
    "large_attachment": {
        "bytes": 1073741824,
        "seconds": 41.33,
        "intact": True,
        "peak_rss_mib": {"docbus send (adapter)": 71.4, "docbus router run": 72.6, "docbus adapter run": 62.9},
    },
}


def test_every_figure_of_a_full_run_is_printed_whole() -> None:
    out = table(rows(FULL_RUN), ["Measure", "Result", "Detail"])
    assert "…" not in out
    for figure in (
        "12876.1 msg/s",
        "1723.0 docs/s",
        "last receipt 0.116 s after",
        "0.134",
        "70.5, 70.7, 70.9 MiB",
        "p99 75.74 ms",
    ):
        assert figure in out
    for name, ms in FULL_RUN["latency"]["cpu_ms_per_doc"].items():
        assert f"CPU per document, {name}" in out and f"{ms} ms" in out
    for name, ms in FULL_RUN["router"]["cpu_ms_per_doc"].items():
        line = next(line for line in out.splitlines() if f"{ms} ms" in line)
        assert f"CPU per document, {name}" in line and "throughput run; machine 89.4 % busy" in line
    for name, mib in FULL_RUN["large_attachment"]["peak_rss_mib"].items():
        line = next(line for line in out.splitlines() if f"peak RSS, {name}" in line)
        assert f"{mib} MiB" in line
    assert "intact (SHA-256 checked)" in out and "45.8 % of a core" in out
    for name, ms in FULL_RUN["raw_relay"]["cpu_ms_per_msg"].items():
        line = next(line for line in out.splitlines() if f"{ms} ms" in line)
        assert f"CPU per message, {name}" in line and "raw relay" in line
    half = next(line for line in out.splitlines() if "at half the relay" in line)
    assert "0.311 ms" in half and "2 cores' time, routers and RabbitMQ together" in half
    assert "0.0701 ms" in next(line for line in out.splitlines() if "the checks alone" in line)
    assert "0.203 ms" in next(line for line in out.splitlines() if "the least a router needs" in line)


def test_a_relay_that_moved_nothing_leaves_no_budget_to_print() -> None:
    run = FULL_RUN | {"budget": FULL_RUN["budget"] | {"half_relay_ms_per_doc": None}}
    line = next(r for r in rows(run) if r[0] == "CPU per document at half the relay")
    assert line[1] == "not measured"


def test_the_ratio_keeps_three_decimals() -> None:
    line = next(r for r in rows(FULL_RUN | {"router_vs_relay": 0.1}) if r[0] == "router / relay")
    assert line[1] == "0.100"


def test_a_corrupted_large_file_says_so() -> None:
    broken = FULL_RUN | {"large_attachment": FULL_RUN["large_attachment"] | {"intact": False}}
    assert "NOT intact" in table(rows(broken), ["Measure", "Result", "Detail"])


def test_a_run_that_lost_documents_is_not_reported_as_a_measurement(monkeypatch, tmp_path) -> None:
    assert shortfalls(FULL_RUN) == []
    lost = FULL_RUN | {
        "latency": FULL_RUN["latency"] | {"stored": 0},
        "router": FULL_RUN["router"] | {"delivered": 19999},
        "large_attachment": FULL_RUN["large_attachment"] | {"intact": False},
    }
    assert shortfalls(lost) == [
        "the routers delivered 19999 of 20000 documents",
        "the recipient stored 0 of the latency run's 2000 documents",
        "the large attachment did not arrive intact",
    ]
    monkeypatch.setattr(bus_bench, "run", lambda *a, **k: lost)
    for args in (["bench"], ["bench", "--json"]):
        res = CliRunner().invoke(main, args, env={"DOCBUS_HOME": str(tmp_path)})
        assert res.exit_code == 5
        assert "the run is not complete, its figures do not hold: the routers delivered 19999" in res.output
    monkeypatch.setattr(bus_bench, "run", lambda *a, **k: FULL_RUN)
    assert CliRunner().invoke(main, ["bench"], env={"DOCBUS_HOME": str(tmp_path)}).exit_code == 0


def test_one_part_alone_prints_only_its_rows() -> None:
    only_router = {k: FULL_RUN[k] for k in ("machine", "envelope_bytes_avg", "raw_relay", "router", "router_vs_relay")}
    out = table(rows(only_router), ["Measure", "Result", "Detail"])
    assert "docs/s" in out and "latency" not in out and "large attachment" not in out


def test_each_stage_of_a_run_gets_its_own_bar_on_stderr(capsys) -> None:
    from cli import StageBars

    with StageBars() as bars:
        for k in range(1, 4):
            bars("registering agencies", k, 3)
        bars("router x3, throughput", 500, 2000)
        bars("router x3, throughput", 2000, 2000)
        bars("latency at 200/s", 2000, 2000)
    out = capsys.readouterr()
    assert out.out == ""  # stdout stays for the table or --json
    labels = ["registering agencies", "router x3, throughput", "latency at 200/s"]
    at = [out.err.find(label) for label in labels]
    assert all(i >= 0 for i in at) and at == sorted(at), out.err


def test_sizes_and_rates_that_measure_nothing_are_usage_errors(tmp_path) -> None:
    for flag in ("--rate", "--latency-seconds", "--large-mib"):
        res = CliRunner().invoke(main, ["bench", flag, "0"], env={"DOCBUS_HOME": str(tmp_path)})
        assert res.exit_code == 2 and "is not in the range 0<x<=" in res.output


def test_a_long_latency_run_gives_the_p99_of_each_window() -> None:
    run = FULL_RUN | {"latency": FULL_RUN["latency"] | {"p99_by_window_ms": [61.5, 345.0, 70.2], "window_s": 10.0}}
    out = table(rows(run), ["Measure", "Result", "Detail"])
    line = next(line for line in out.splitlines() if "p99 of each" in line)
    assert "p99 of each 10 s" in line and "61.5–345.0 ms" in line and "3 windows; their median 70.2 ms" in line
    assert "p99 of each" not in table(rows(FULL_RUN), ["Measure", "Result", "Detail"])  # a short run: no such row


def test_the_broker_log_roll_overs_while_sending_are_told() -> None:
    def row(seen: list | None) -> str | None:
        run = FULL_RUN | {"latency": FULL_RUN["latency"] | {"broker_wal_rollovers": seen}}
        lines = table(rows(run), ["Measure", "Result", "Detail"]).splitlines()
        return next((line for line in lines if "roll-overs" in line), None)

    seen = [{"at_s": 89.54, "seconds": 1.63}, {"at_s": 230.1, "seconds": None}, {"at_s": 300.0, "seconds": 1.2}]
    line = row(seen)
    assert line is not None and " 3 " in line
    assert "at 89.54 s, 1.63 s; at 230.1 s, still going at the end; …" in line
    assert (row([]) or "").rstrip().endswith(" 0")
    assert row(None) is None  # not watched (no local broker log to read): no row


def test_the_senders_01s_and_receipts_back_by_the_end_are_told() -> None:
    taken = {"answers_taken": 1996, "answers_due": 2004, "receipts_taken": 2001}
    run = FULL_RUN | {"latency": FULL_RUN["latency"] | taken}
    line = next(line for line in table(rows(run), ["Measure", "Result", "Detail"]).splitlines() if "01s" in line)
    assert "01s / documents' receipts back with the senders" in line and "1996 / 2001 of 2004" in line
    assert "when the last document was stored" in line
    assert "01s /" not in table(rows(FULL_RUN), ["Measure", "Result", "Detail"])  # a run from before: no row
