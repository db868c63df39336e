"""The measuring helpers behind `docbus bench` (benchmarks/stats.py)."""

from __future__ import annotations

import math
import os
import time

from benchmarks.stats import CpuPeak, busy_pct, cpu_seconds, machine_ticks, p99_by_window, percentile


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
