"""Percentiles and timing helpers shared by the benchmarks."""

from __future__ import annotations

import math
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """Latency samples in seconds -> p50/p95/p99/mean/max in milliseconds."""
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
    }


def p99_by_window(timed_samples: Sequence[tuple[float, float]], seconds: float, width: float = 10.0) -> list[float]:
    """The p99 in ms of each whole ``width``-second window of a run ``seconds`` long, in order.

    ``timed_samples``: (when the document was submitted, its latency), both in seconds, the
    first submitted at the run's start.  Why: one p99 over a run says how slow its tail was,
    not whether the tail is spread evenly (the two cores simply full) or is one stall
    (RabbitMQ rolling its write-ahead log over) inside otherwise quick windows.  A part of a
    window at the end is left out; an empty list when the run is shorter than two windows.
    """
    whole = int(seconds / width + 1e-9)
    if not timed_samples or whole < 2:
        return []
    start = min(at for at, _ in timed_samples)
    windows: list[list[float]] = [[] for _ in range(whole)]
    for at, latency in timed_samples:
        i = int((at - start) // width)
        if i < whole:
            windows[i].append(latency * 1000)
    return [round(percentile(w, 99), 1) for w in windows if w]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``; NaN if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far; idle and I/O wait are not busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def busy_pct(ticks: list[tuple[int, int]]) -> float | None:
    """How busy the machine was between the first and last ``machine_ticks()`` readings, in percent."""
    if len(ticks) < 2:
        return None
    (busy0, total0), (busy1, total1) = ticks[0], ticks[-1]
    return round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)


class CpuPeak:
    """The busiest ``interval`` of one process while in use, in percent of one core.

    Why: averages hide a burst.  RabbitMQ rolling its quorum queues' write-ahead log over
    takes most of a core for a second, and the documents sent meanwhile make the latency's
    tail; the peak says whether a run's window held one.  Sampled from ``/proc`` on a
    thread that sleeps between readings.
    """

    def __init__(self, pid: int | str, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.peak: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        last = (time.monotonic(), cpu_seconds(self.pid))
        while not self._done.wait(self.interval):
            now = (time.monotonic(), cpu_seconds(self.pid))
            if now[0] > last[0] and not math.isnan(now[1] - last[1]):
                pct = round(100 * (now[1] - last[1]) / (now[0] - last[0]), 1)
                self.peak = pct if self.peak is None else max(self.peak, pct)
            last = now


def rollovers(readings: Sequence[tuple[float, frozenset[str]]]) -> list[tuple[float, float | None]]:
    """(start, duration) of each write-ahead-log roll-over in ``readings`` of (time, log file
    names): one starts when a new log file appears and ends when the file before it is gone
    (duration None: still going at the last reading).  A removal with no start seen (a
    roll-over under way when the readings began) is not one of them."""
    found: list[tuple[float, float | None]] = []
    before: frozenset[str] | None = None
    for at, names in readings:
        if before is not None:
            if names - before:
                found.append((at, None))
            if before - names and found and found[-1][1] is None:
                found[-1] = (found[-1][0], at - found[-1][0])
        before = names
    return found


def broker_wal_folder(pid: int, default_home: Path = Path("/var/lib/rabbitmq")) -> Path | None:
    """The folder of the local RabbitMQ node's quorum-queue write-ahead log (``*.wal`` under
    ``$HOME/mnesia/<node>/quorum/<node>/``, HOME read from the node's environment where this
    user may), or None when it cannot be found or read."""
    home = default_home
    try:
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"HOME="):
                home = Path(os.fsdecode(entry[5:]))
    except OSError:
        pass
    try:
        found = sorted(home.glob("mnesia/*/quorum/*/*.wal"))
    except OSError:
        return None
    return found[0].parent if found else None


class WalWatch:
    """When the local RabbitMQ rolled its quorum queues' write-ahead log over, and for how long.

    Why: at a roll-over RabbitMQ writes what the log still holds into each queue's segments and
    drops the old log's tables, most of a core for a second or two on this machine, and the
    documents sent meanwhile wait for their confirms; a latency run's tail is that stall, or
    the machine simply full, and the p99 alone cannot say which.  Read from the file names in
    ``folder`` on a thread that sleeps between readings (a listing every ``interval``); with
    no folder nothing is watched and :meth:`seen` gives None.
    """

    def __init__(self, folder: Path | None, interval: float = 0.05) -> None:
        self.folder, self.interval = folder, interval
        self._readings: list[tuple[float, frozenset[str]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> WalWatch:
        if self.folder is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _names(self) -> frozenset[str] | None:
        try:
            return frozenset(e.name for e in os.scandir(self.folder) if e.name.endswith(".wal"))
        except OSError:  # a listing that failed says nothing (an empty one would read as a new log later)
            return None

    def _read(self) -> None:
        while True:
            names = self._names()
            if names is not None and (not self._readings or names != self._readings[-1][1]):  # changes only
                self._readings.append((time.perf_counter(), names))
            if self._done.wait(self.interval):
                return

    def seen(self, origin: float) -> list[dict[str, float | None]] | None:
        """Each roll-over as ``{"at_s", "seconds"}``, ``at_s`` from ``origin`` (a
        ``time.perf_counter()`` reading); None when nothing was watched."""
        if self.folder is None:
            return None
        return [
            {"at_s": round(start - origin, 2), "seconds": None if took is None else round(took, 2)}
            for start, took in rollovers(self._readings)
        ]


def local_broker_pid() -> int | None:
    """The pid of a RabbitMQ node on this machine (``beam.smp``), if there is one."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "beam.smp":
                    return int(proc.name)
            except OSError:
                continue
    return None


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rsa2048_sign_ms": rsa_sign_ms(),
    }


def rsa_sign_ms(rounds: int = 200) -> float:
    """The median time of one RSA-2048 signature here, now, in ms.

    Why: the virtual machines this runs on change speed from one hour to the next (the same
    signature has taken 0.25 ms and 0.8 ms on one host), and every document on the bus costs
    two of them; runs of different rounds are compared through this figure."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        key.sign(b"docbus", padding.PKCS1v15(), hashes.SHA256())
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)
