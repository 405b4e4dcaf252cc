"""CPU thread policy of the training script (modeling_zonkey/training/threads.py): the free cores, adapted as load
changes."""

import subprocess
import sys
import time

import pytest
import torch

from modeling_zonkey.training import threads
from modeling_zonkey.training.threads import CpuNeighbours, ThreadGovernor, fixed_threads


@pytest.fixture
def keep_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_fixed_threads_parses_the_flag_and_the_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert fixed_threads("auto") is None
    assert fixed_threads("3") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fixed_threads("auto") == 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="--threads must be 'auto' or a positive integer"):
            fixed_threads(bad)


def test_governor_uses_the_cores_neighbours_leave_free(monkeypatch, keep_threads):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    governor = ThreadGovernor(None, interval=0.0, probe=0.0)
    assert [governor.choose(b) for b in (None, 0.0, 0.4, 0.6, 1.0, 2.7, 3.9, 8.0)] == [4, 4, 4, 3, 3, 1, 1, 1]
    readings = iter([0.0, 2.0, 2.0, 0.1])
    monkeypatch.setattr(governor.neighbours, "busy_cores", lambda: next(readings))
    assert governor.start() == 4 and torch.get_num_threads() == 4
    assert governor.step() == 2 and torch.get_num_threads() == 2  # a neighbour took two cores
    assert governor.step() is None  # unchanged
    assert governor.step() == 4  # it left
    assert [count for _, count in governor.changes][-2:] == [2, 4]


def test_fixed_governor_never_changes_the_count(monkeypatch, keep_threads):
    governor = ThreadGovernor(1, interval=0.0)
    monkeypatch.setattr(governor.neighbours, "busy_cores", lambda: 0.0)
    assert governor.start() == 1 and governor.step() is None and torch.get_num_threads() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_spinning_neighbour_is_measured():
    neighbours = CpuNeighbours()
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        neighbours.busy_cores()  # start the interval once the neighbour runs
        time.sleep(1.0)
        busy = neighbours.busy_cores()
    finally:
        hog.kill()
    assert busy is not None and busy >= 0.5, busy
