"""`docbus bench` runs and reports (a smoke run: the figures themselves are for docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stats import broker_wal_folder, local_broker_pid

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


SMALL = ["--documents", "30", "--agencies", "3", "--workers", "2", "--latency-workers", "1"]
SMALL += ["--rate", "20", "--latency-seconds", "1"]


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "bench", *SMALL, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_smoke_run_reports_every_part(broker_url, tmp_path) -> None:
    env = dict(os.environ, DOCBUS_HOME=str(tmp_path / "home"), DOCBUS_AMQP_URL=broker_url)
    env.pop("DOCBUS_DB_URL", None)
    samples = tmp_path / "samples.json"
    done = bench(env, "--large-mib", "5", "--json", "--samples", str(samples))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    each = json.loads(samples.read_text(encoding="utf-8"))  # one row per latency-run document, in sending order
    assert len(each) == report["latency"]["documents"] == 20
    assert [r["submitted"] for r in each] == sorted(r["submitted"] for r in each)
    assert all(r["stored"] > r["submitted"] and r["ms"] > 0 for r in each)
    assert max(r["ms"] for r in each) == pytest.approx(report["latency"]["max_ms"], abs=0.01)
    assert report["router"]["delivered"] == report["router"]["documents"] == 30
    assert report["raw_relay"]["relayed"] == 30 and report["router_vs_relay"] > 0
    assert report["raw_relay"]["cpu_ms_per_msg"]["relay"] > 0
    # what half the relay leaves per document, beside what the checks alone cost (benchmarks.floor)
    budget = report["budget"]
    assert budget["half_relay_ms_per_doc"] == pytest.approx(
        budget["cores"] * 1000 / (report["raw_relay"]["msgs_per_s"] / 2), rel=0.01
    )
    floor = budget["checks_floor_ms_per_doc"]
    if local_broker_pid() is not None:  # RabbitMQ's CPU is read from /proc: on this machine only
        relaying = sum(report["raw_relay"]["cpu_ms_per_msg"].values())
        assert budget["least_ms_per_doc"] == pytest.approx(floor["total"] + relaying, abs=0.002)
    assert all(floor[k] > 0 for k in ("parse", "schema", "digest", "signature", "signed_tree", "seal", "archive"))
    assert report["router"]["workers"] == 2 and report["latency"]["workers"] == 1
    assert report["latency"]["stored"] == report["latency"]["documents"] == 20
    # the senders took their 01s off the broker as their adapters would (warm-ups' included)
    assert 0 < report["latency"]["answers_taken"] <= report["latency"]["answers_due"] == 20 + 2
    assert 0 < report["latency"]["receipts_taken"] <= report["latency"]["answers_due"]  # the data centre's receipts
    assert {"p50_ms", "p95_ms", "p99_ms"} <= set(report["latency"])
    assert 0 < report["machine"]["rsa2048_sign_ms"] < 100  # the host's speed, to compare runs of different rounds
    cpu = report["latency"]["cpu_ms_per_doc"]  # every docbus process of the run, and its share of the machine
    assert {"routers", "recipient", "senders"} <= set(cpu) and all(ms > 0 for ms in cpu.values())
    assert 0 < report["latency"]["cpu_busy_pct"] <= 100
    broker = local_broker_pid()
    if broker is not None:  # RabbitMQ on this machine: its busiest half second is reported
        assert report["latency"]["broker_peak_pct"] is not None
    rollovers = report["latency"]["broker_wal_rollovers"]  # its log's roll-overs, where this user can see the log
    assert rollovers is None if broker is None or broker_wal_folder(broker) is None else isinstance(rollovers, list)
    large = report["large_attachment"]
    assert large["intact"] is True and large["bytes"] == 5 * 1024 * 1024
    assert set(large["peak_rss_mib"]) == {"docbus send (adapter)", "docbus router run", "docbus adapter run"}
    table = bench(env, "--only", "router", "--only", "large", "--large-mib", "1")  # a file small enough to go inline
    assert table.returncode == 0, table.stderr[-2000:]
    assert "router / relay" in table.stdout and "docs/s" in table.stdout
    assert "an RSA-2048 signature takes" in table.stdout
    assert "large attachment 1.0 MiB" in table.stdout and "intact (SHA-256 checked)" in table.stdout
