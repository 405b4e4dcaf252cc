"""examples/experiments/scaling_check.py: validation read at wall-clock minute marks, runs side by side."""

import json
import sys
from pathlib import Path

import pytest
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "scaling_check.py"


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "scaling_check")


def write_run(folder: Path, seconds_per_step: float, accuracies: dict[int, float], parameters: int | None) -> None:
    """A run folder's TensorBoard log: train/loss every step from wall time 1000 s, validation at the given steps."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "zonkey"))
    for step in range(1, max(accuracies) + 1):
        wall = 1000.0 + step * seconds_per_step
        writer.add_scalar("train/loss", 1.0 / step, step, walltime=wall)
        if step in accuracies:
            writer.add_scalar("val/byte_accuracy_level0", accuracies[step], step, walltime=wall)
    writer.close()
    if parameters is not None:
        (folder / "train_results.json").write_text(json.dumps({"num_parameters": parameters}))


def test_each_minute_mark_takes_the_last_validation_before_it(script, tmp_path, monkeypatch, capsys):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    write_run(fast, 6.0, {10: 0.5, 20: 0.6, 30: 0.7}, 2_180_000)  # validations at 1, 2 and 3 minutes
    write_run(slow, 12.0, {5: 0.4, 10: 0.8}, None)  # at 0.8 and 1.8 minutes; still training (no results)
    events = script.read_scalar_events(fast)
    table = script.at_minutes(events, [0.5, 1.5, 2.5, 10.0])
    # minutes count from the first step's log (6 s after 1000 s), so step 10 (60 s in) lands at 0.9 minutes
    assert table["val/byte_accuracy_level0"] == [None, (10, pytest.approx(0.5)), (20, pytest.approx(0.6)),
                                                 (30, pytest.approx(0.7)), (30, pytest.approx(0.7))]
    monkeypatch.setattr(sys, "argv", ["scaling_check.py", str(fast), str(slow), "--minutes", "1", "2", "3"])
    script.main()
    out = capsys.readouterr().out
    assert f"| {fast} | 2.18 M | 50.0% (10) | 60.0% (20) | 70.0% (30) | 70.0% (30) |" in out
    assert f"| {slow} | ? | 40.0% (5) | 80.0% (10) | 80.0% (10) | 80.0% (10) |" in out
    assert "| - | - | - | - |" in out  # a metric the runs never logged (e.g. the top level's) shows dashes

    monkeypatch.setattr(sys, "argv", ["scaling_check.py", str(fast), "--minutes", "1"])
    script.main()  # the last column: the final validation, after the last minute mark
    assert f"| {fast} | 2.18 M | 50.0% (10) | 70.0% (30) |" in capsys.readouterr().out


def test_minute_marks_must_ascend(script, tmp_path, monkeypatch):
    write_run(tmp_path / "run", 6.0, {10: 0.5}, None)
    monkeypatch.setattr(sys, "argv", ["scaling_check.py", str(tmp_path / "run"), "--minutes", "10", "5"])
    with pytest.raises(SystemExit, match="ascending"):
        script.main()
