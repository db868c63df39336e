"""The measuring helpers behind `docbus bench` (benchmarks/stats.py)."""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

from benchmarks.stats import (
    CpuPeak,
    WalWatch,
    broker_wal_folder,
    busy_pct,
    cpu_seconds,
    machine_ticks,
    p99_by_window,
    percentile,
    rollovers,
)


def test_cpu_seconds_counts_this_process_and_not_a_missing_one() -> None:
    before = cpu_seconds()
    x = 0
    while cpu_seconds() - before < 0.05:  # spin until the kernel has charged some CPU time
        x += 1
    assert cpu_seconds(os.getpid()) >= before + 0.05
    assert math.isnan(cpu_seconds(2**22 + 12345))  # beyond pid_max: no such process


def test_machine_ticks_and_busy_share() -> None:
    busy, total = machine_ticks()
    assert 0 <= busy <= total
    assert busy_pct([(100, 1000), (250, 1200)]) == 75.0  # 150 busy ticks of 200
    assert busy_pct([(100, 1000)]) is None


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert math.isnan(percentile([], 50))


def test_cpu_peak_finds_the_busy_stretch() -> None:
    with CpuPeak("self", interval=0.05) as idle:
        time.sleep(0.3)
    with CpuPeak("self", interval=0.05) as busy:
        end = time.monotonic() + 0.4
        while time.monotonic() < end:  # one core's worth, for a while
            pass
    assert idle.peak is not None and busy.peak is not None
    assert busy.peak > 50 and busy.peak > idle.peak
    with CpuPeak(2**22 + 12345, interval=0.05) as gone:  # no such process: no figure, no error
        time.sleep(0.15)
    assert gone.peak is None


def test_p99_by_window_finds_the_stall_and_leaves_out_the_unfinished_window() -> None:
    # 35 s at 10 documents/s, 20 ms each, but 300 ms for the documents sent 12.0-12.5 s in
    samples = [(1000 + i / 10, 0.3 if 120 <= i < 125 else 0.02) for i in range(350)]
    windows = p99_by_window(samples, 35.0, 10.0)
    assert len(windows) == 3  # 0-10, 10-20, 20-30 s; the last five seconds are no whole window
    assert windows[0] == windows[2] == 20.0
    assert windows[1] > 250  # the stall is in the second window only
    assert len(p99_by_window(samples[:300], 30.0, 10.0)) == 3  # the last sent at 29.9 s: still three
    assert p99_by_window(samples[:150], 15.0, 10.0) == []  # fewer than two whole windows
    assert p99_by_window([], 30.0, 10.0) == []


def test_rollovers_run_from_a_new_log_file_to_the_old_ones_removal() -> None:
    a, ab, b, bc, c = (frozenset(n) for n in (["1.wal"], ["1.wal", "2.wal"], ["2.wal"], ["2.wal", "3.wal"], ["3.wal"]))
    readings = [(0.0, a), (10.0, ab), (11.5, b), (40.0, bc), (40.0, c)]
    assert rollovers(readings) == [(10.0, 1.5), (40.0, 0.0)]  # the second began and ended between two readings
    assert rollovers([(0.0, a), (5.0, ab)]) == [(5.0, None)]  # still going at the end
    assert rollovers([(0.0, ab), (2.0, b)]) == []  # under way before the first reading: not counted
    assert rollovers([(0.0, a)]) == [] and rollovers([]) == []


def test_wal_watch_sees_a_roll_over_in_a_folder(tmp_path: Path) -> None:
    (tmp_path / "00000001.wal").write_bytes(b"x")
    (tmp_path / "meta.dets").write_bytes(b"not a log")
    with WalWatch(tmp_path, interval=0.01) as watch:
        origin = time.perf_counter()
        time.sleep(0.3)  # the watcher has read the folder as it was
        (tmp_path / "00000002.wal").write_bytes(b"")
        time.sleep(0.3)
        (tmp_path / "00000001.wal").unlink()
        (tmp_path / "meta.dets").unlink()  # not a log file: no event
        time.sleep(0.1)
    seen = watch.seen(origin)
    assert seen is not None and len(seen) == 1
    assert 0.25 <= seen[0]["at_s"] <= 1.5 and 0.25 <= seen[0]["seconds"] <= 1.5, seen
    with WalWatch(None) as nothing:  # no broker log to watch: no figure, no thread
        pass
    assert nothing.seen(origin) is None


def test_broker_wal_folder_follows_the_node_home(tmp_path: Path) -> None:
    logs = tmp_path / "mnesia" / "rabbit@here" / "quorum" / "rabbit@here"
    logs.mkdir(parents=True)
    nowhere = tmp_path / "nowhere"  # never this machine's own broker
    node = subprocess.Popen(["sleep", "30"], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    try:
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{node.pid}/cmdline").read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            time.sleep(0.01)  # its environment is its own once it runs sleep
        assert broker_wal_folder(node.pid, default_home=nowhere) is None  # no log yet
        (logs / "00000007.wal").write_bytes(b"")
        assert broker_wal_folder(node.pid, default_home=nowhere) == logs
        (nowhere / "mnesia" / "n" / "quorum" / "n").mkdir(parents=True)
        (nowhere / "mnesia" / "n" / "quorum" / "n" / "00000001.wal").write_bytes(b"")
        # a process that is gone: the default home
        assert broker_wal_folder(2**22 + 12345, default_home=nowhere) == nowhere / "mnesia" / "n" / "quorum" / "n"
    finally:
        node.kill()
        node.wait()
