"""CPU threads for training on a shared machine: use the cores nobody else is using.

On a small machine, a step with more threads than free cores is much slower than one with fewer: OpenMP's worker
threads spin-wait for a sibling that another process keeps descheduled, and OMP_WAIT_POLICY=PASSIVE, which avoids
the spinning, slows every idle step (the numbers: docs/research/benchmarks.md, benchmarks/bench_busy_machine.py).

So the training script's `--threads auto` measures how many cores other processes keep busy (from /proc/stat,
less this process's own CPU time), uses the rest (at least one), and measures again every `interval` seconds,
lowering or raising torch's intra-op thread count as neighbours come and go. OMP_NUM_THREADS in the
environment, or an explicit `--threads N`, fixes the count instead (bit-exact resumption needs a fixed count).
"""

import os
import time

import torch


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _busy_and_total_ticks() -> tuple[int, int] | None:
    """Aggregate (busy, total) jiffies of all CPUs from /proc/stat, or None where there is no /proc."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuNeighbours:
    """How many cores processes other than this one have kept busy since the last reading."""

    def __init__(self):
        self.last = self._read()

    def _read(self):
        ticks = _busy_and_total_ticks()
        return None if ticks is None else (ticks, time.process_time(), time.monotonic())

    def busy_cores(self) -> float | None:
        """Cores used by other processes since the previous call (None without /proc/stat or too short a gap)."""
        now = self._read()
        if now is None or self.last is None:
            return None
        (busy0, total0), own0, wall0 = self.last
        (busy1, total1), own1, wall1 = now
        if total1 - total0 <= 0 or wall1 - wall0 <= 0:
            return None
        self.last = now
        cores = os.cpu_count() or 1
        all_busy = cores * (busy1 - busy0) / (total1 - total0)  # cores in use by everyone
        return max(0.0, all_busy - (own1 - own0) / (wall1 - wall0))


class ThreadGovernor:
    """Chooses and adapts torch's intra-op thread count. `fixed`: a count never changed (None: adapt).

        governor = ThreadGovernor(None); governor.start()      # measures for `probe` seconds, sets threads
        ...; governor.step()                                    # in the training loop: re-measures every interval
    """

    def __init__(self, fixed: int | None, interval: float = 30.0, probe: float = 0.5):
        self.fixed, self.interval, self.probe = fixed, interval, probe
        self.cores = available_cores()
        self.neighbours = CpuNeighbours()
        self.next_check = 0.0
        self.changes: list[tuple[float, int]] = []  # (monotonic time, threads) of every change

    @property
    def adaptive(self) -> bool:
        return self.fixed is None

    def start(self) -> int:
        if self.fixed is not None:
            torch.set_num_threads(self.fixed)
            return self.fixed
        time.sleep(self.probe)
        return self._apply(self.neighbours.busy_cores())

    def step(self) -> int | None:
        """Re-measure when the interval has passed; returns the new count when it changed, else None."""
        if self.fixed is not None or time.monotonic() < self.next_check:
            return None
        before = torch.get_num_threads()
        after = self._apply(self.neighbours.busy_cores())
        return after if after != before else None

    def choose(self, busy: float | None) -> int:
        """Free cores (at least 1): all available ones when the load cannot be measured."""
        if busy is None:
            return self.cores
        return max(1, min(self.cores, int(self.cores - busy + 0.5)))

    def _apply(self, busy: float | None) -> int:
        self.next_check = time.monotonic() + self.interval
        threads = self.choose(busy)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append((time.monotonic(), threads))
        return threads


def fixed_threads(requested: str) -> int | None:
    """--threads value -> a fixed count, or None for "auto" (which OMP_NUM_THREADS also fixes)."""
    if requested != "auto":
        try:
            count = int(requested)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"--threads must be 'auto' or a positive integer, got {requested!r}.")
        return count
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return None
