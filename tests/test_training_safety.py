"""examples/train_zonkey.py as a careful user breaks it (issue #16): a run owns its folder, resumes exactly and only
with its own arguments, names every damaged checkpoint part, and ends any bad input with one `error:` line."""

import errno
import json
import os
import shutil

import pytest
import torch
from conftest import run_main, script_in_process
from safetensors.torch import load_file
from test_training import (
    MICRO,
    assert_ok,
    read_log,
    run_expecting_one_error,
    train_args,
    write_corpus,
)
from test_training_sources import data_args

SHORT = ("--per_device_train_batch_size", "4", "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "1")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A micro run stopped after step 2 of 4 (checkpoints step_2; no EMA), and its data: copied by the tests."""
    tmp = tmp_path_factory.mktemp("stopped")
    train, validation, _ = write_corpus(tmp / "data")
    out = tmp / "run"
    with script_in_process(tmp) as script:
        assert_ok(run_main(script, train_args(train, validation, out, *SHORT, "--stop_after_steps", "2")))
    return {"out": out, "train": train, "validation": validation}


def copy_run(stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run["out"], out)
    return out, train_args(stopped_run["train"], stopped_run["validation"], out, *SHORT)


# ---------------------------------------------------------------- exact resumption


def test_deterministic_run_is_bit_exact_at_two_threads(in_process, tmp_path):
    """--deterministic at 2 threads: an uninterrupted run, and the same run stopped at step 2 and resumed with
    --threads auto (which takes the checkpoint's 2 threads), end with identical logs and weights."""
    train, validation, _ = write_corpus(tmp_path / "data")

    def train_run(out, *extra):
        result = run_main(in_process, train_args(train, validation, out, *SHORT, "--deterministic", *extra))
        assert_ok(result)
        return result

    a, b = tmp_path / "A", tmp_path / "B"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OMP_NUM_THREADS")  # let --threads decide
        patch.delenv("MKL_NUM_THREADS", raising=False)
        train_run(a, "--threads", "2")
        train_run(b, "--threads", "2", "--stop_after_steps", "2")
        resumed = train_run(b, "--threads", "auto", "--resume_from_checkpoint", "latest")
    assert "CPU threads per process: 2 of" in resumed.stderr
    log_a, log_b = read_log(a), read_log(b)
    assert [row["threads"] for row in log_b] == [2, 2, 2, 2]
    assert [(r["loss"], r["grad_norm"]) for r in log_a] == [(r["loss"], r["grad_norm"]) for r in log_b]
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    state = json.loads((b / "step_4" / "training_state.json").read_text())
    assert state["run_args"]["threads"] == 2 and state["run_args"]["deterministic"] is True


@pytest.mark.parametrize("change, changed", [
    (("--learning_rate", "0.001"), "learning_rate 0.0003 -> 0.001"),
    (("--per_device_train_batch_size", "2"), "per_device_train_batch_size 4 -> 2"),
    (("--max_train_steps", "6"), "max_train_steps 4 -> 6"),
    (("--seed", "2"), "seed 1 -> 2"),
])
def test_resume_with_other_arguments_is_refused(stopped_run, in_process, tmp_path, capsys, change, changed):
    out, args = copy_run(stopped_run, tmp_path)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    error = run_expecting_one_error(in_process, args + ["--resume_from_checkpoint", "latest"], capsys)
    assert f"was written with other arguments ({changed})" in error and "--allow_changed_args" in error
    assert [row["step"] for row in read_log(out)] == [1, 2]  # nothing trained, the log kept


def test_allow_changed_args_resumes_with_a_warning(stopped_run, in_process, tmp_path, capsys):
    out, args = copy_run(stopped_run, tmp_path)
    args[args.index("--max_train_steps") + 1] = "5"
    in_process.main(args + ["--resume_from_checkpoint", "latest", "--allow_changed_args"])
    assert "warning: --allow_changed_args: resuming with max_train_steps 4 -> 5" in capsys.readouterr().out
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4, 5]


def test_latest_skips_another_runs_checkpoint(stopped_run, in_process, tmp_path, capsys, caplog):
    """A step folder copied in from another run is not resumed by 'latest' (run ids), and it says so."""
    out, args = copy_run(stopped_run, tmp_path)
    shutil.copytree(out / "step_2", out / "step_3")
    state = json.loads((out / "step_3" / "training_state.json").read_text())
    state.update(run_id="another-run", completed_steps=3)
    (out / "step_3" / "training_state.json").write_text(json.dumps(state))
    in_process.main(args + ["--resume_from_checkpoint", "latest"])
    printed = capsys.readouterr().out
    assert "warning: latest: skipped step_3, written by another run" in printed
    assert f"resumed from {out / 'step_2'}: step 2" in caplog.text
    shutil.rmtree(out / "step_2")
    shutil.rmtree(out / "step_4")
    error = run_expecting_one_error(in_process, args + ["--resume_from_checkpoint", "latest"], capsys)
    assert "no complete checkpoint" in error and "(step_3 belong to another run)" in error


# ---------------------------------------------------------------- damaged checkpoints


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


@pytest.mark.parametrize("part", ["random_states_0.pkl", "model.safetensors", "optimizer.bin", "scheduler.bin",
                                  "training_state.json"])
def test_a_damaged_checkpoint_part_is_named_in_one_line(stopped_run, in_process, tmp_path, capsys, part):
    out, args = copy_run(stopped_run, tmp_path)
    truncate(out / "step_2" / part)
    error = run_expecting_one_error(in_process, args + ["--resume_from_checkpoint", "latest"], capsys)
    assert str(out / "step_2" / part) in error, error
    assert ("cannot be read" in error) and len(error) < 400
    assert [row["step"] for row in read_log(out)] == [1, 2]  # nothing resumed from an older state


def test_a_missing_random_state_is_named(stopped_run, in_process, tmp_path, capsys):
    out, args = copy_run(stopped_run, tmp_path)
    (out / "step_2" / "random_states_0.pkl").unlink()
    error = run_expecting_one_error(in_process, args + ["--resume_from_checkpoint", "step_2"], capsys)
    assert f"{out / 'step_2' / 'random_states_0.pkl'} is missing" in error


# ---------------------------------------------------------------- bad arguments, folders and disks


@pytest.mark.parametrize("flag, value, message", [
    ("--ema_decay", "1.5", "--ema_decay must be in (0, 1)"),
    ("--learning_rate", "nan", "--learning_rate must be a finite number"),
    ("--learning_rate", "inf", "--learning_rate must be a finite number"),
    ("--max_grad_norm", "nan", "--max_grad_norm must be a finite number"),
    ("--validation_split_percentage", "100", "--validation_split_percentage must be in [0, 100)"),
    ("--seed", str(2**64), "--seed must be in [0, 2**32 - 1]"),
    ("--eval_batches", "-1", "--eval_batches must be >= 0"),
])
def test_bad_arguments_are_one_usage_error(in_process, tmp_path, capsys, flag, value, message):
    args = ["--config_name", str(MICRO), "--output_dir", str(tmp_path / "out"), flag, value]
    with pytest.raises(SystemExit) as exit_info:
        in_process.parse_args(args)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f": error: {message}" + last.split(message, 1)[-1]), last


def test_a_list_config_and_a_file_as_output_dir(in_process, tmp_path, capsys):
    train, validation, _ = write_corpus(tmp_path / "data")
    (tmp_path / "list.json").write_text("[1, 2]")
    args = train_args(train, validation, tmp_path / "out", "--max_train_steps", "1")
    args[args.index("--config_name") + 1] = str(tmp_path / "list.json")
    error = run_expecting_one_error(in_process, args, capsys)
    assert "holds a JSON list, not a config object" in error
    args = train_args(train, validation, tmp_path / "list.json", "--max_train_steps", "1")
    error = run_expecting_one_error(in_process, args, capsys)
    assert f"--output_dir {tmp_path / 'list.json'} is a file" in error


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir(in_process, tmp_path, capsys):
    train, validation, _ = write_corpus(tmp_path / "data")
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o555)
    try:
        args = train_args(train, validation, tmp_path / "locked" / "out", "--max_train_steps", "1")
        error = run_expecting_one_error(in_process, args, capsys)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert "cannot be written (Permission denied)" in error


def test_a_full_disk_while_checkpointing_keeps_the_earlier_checkpoints(in_process, tmp_path, capsys, monkeypatch):
    """The disk fills up while step_4 is written: one error line, step_2 intact and resumable, no partial folder."""
    from accelerate import Accelerator

    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "run"
    args = train_args(train, validation, out, *SHORT)
    save_state, calls = Accelerator.save_state, []

    def fills_the_disk(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            os.makedirs(output_dir, exist_ok=True)
            (tmp_path / "run" / ".tmp-step_4" / "model.safetensors").write_bytes(b"part of a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fills_the_disk)
    error = run_expecting_one_error(in_process, args, capsys)
    assert error.startswith(f"error: cannot write the checkpoint {out / 'step_4'} (No space left on device)")
    assert "The earlier checkpoints are intact (step_2)" in error
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["step_2"]  # the partial .tmp-step_4 is gone
    monkeypatch.setattr(Accelerator, "save_state", save_state)
    in_process.main(args + ["--resume_from_checkpoint", "latest"])
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- odd data, no evaluation


@pytest.mark.parametrize("case", ["one_paragraph", "no_validation_split", "eval_batches_0"])
def test_runs_without_evaluation_say_so_and_report_nothing(in_process, tmp_path, caplog, case):
    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "out"
    if case == "one_paragraph":
        (tmp_path / "one.jsonl").write_text('{"text": "One paragraph only, about the river and the city."}\n')
        args = ["--config_name", str(MICRO), "--train_file", str(tmp_path / "one.jsonl"), "--output_dir", str(out)]
    elif case == "no_validation_split":
        args = ["--config_name", str(MICRO), "--train_file", str(train), "--validation_split_percentage", "0",
                "--output_dir", str(out)]
    else:
        args = train_args(train, validation, out, "--eval_batches", "0")
    in_process.main(args + ["--max_train_steps", "2", "--per_device_train_batch_size", "4"])
    assert ("no evaluation: --eval_batches 0" if case == "eval_batches_0" else
            "no evaluation: the validation split has no documents") in caplog.text
    results = json.loads((out / "train_results.json").read_text())
    assert results["final_eval"] == {} and results["completed_steps"] == 2
    assert (out / "model.safetensors").is_file()


def test_resuming_at_the_final_step_still_evaluates(stopped_run, in_process, tmp_path, caplog):
    """A run resumed from its last step trains nothing but still writes the final evaluation (no EMA here)."""
    out, args = copy_run(stopped_run, tmp_path)
    in_process.main(args + ["--resume_from_checkpoint", "latest"])  # finishes steps 3-4, writes step_4
    finished = json.loads((out / "train_results.json").read_text())["final_eval"]
    (out / "train_results.json").unlink()
    in_process.main(args + ["--resume_from_checkpoint", "latest"])
    assert "nothing to train" in caplog.text
    again = json.loads((out / "train_results.json").read_text())["final_eval"]
    assert finished and again == finished


# ---------------------------------------------------------------- checkpoints hold no trusted pickle; diverged steps


class Payload:
    """Unpickling this runs a command (what a crafted checkpoint file could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ema_state_is_safetensors_and_no_pickle_is_trusted(micro_folder, in_process, tmp_path):
    """#16: the EMA weights are saved as ema.safetensors; a checkpoint holding a pickle is refused with one error
    line before anything unpickles it; without ema.safetensors the EMA restarts, with a warning."""
    import pickle

    out, marker = tmp_path / "ema", tmp_path / "pwned"
    common = ["--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--max_train_steps", "4", "--per_device_train_batch_size", "4", "--eval_batches",
              "1", "--checkpointing_steps", "2", "--ema_decay", "0.9", "--seed", "1"]
    assert_ok(run_main(in_process, common + ["--stop_after_steps", "2"]))
    step = out / "step_2"
    assert (step / "ema.safetensors").is_file() and not list(step.glob("custom_checkpoint_*"))
    (step / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    result = run_main(in_process, common + ["--resume_from_checkpoint", "latest"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "holds pickled objects" in errors[0], result.stderr[-2000:]
    assert not marker.exists()
    (step / "custom_checkpoint_0.pkl").unlink()
    (step / "ema.safetensors").unlink()
    result = run_main(in_process, common + ["--resume_from_checkpoint", "latest"])
    assert_ok(result)
    assert "has no ema.safetensors; the EMA restarts" in result.stdout + result.stderr
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4]


def test_a_reused_output_dir_is_refused_unless_overwritten(micro_folder, in_process, tmp_path):
    """#16: a fresh run in a folder holding another run's checkpoints would mix the two on the next resume."""
    out = tmp_path / "reused"
    common = ["--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--per_device_train_batch_size", "4", "--eval_batches", "1",
              "--checkpointing_steps", "2"]
    assert_ok(run_main(in_process, common + ["--max_train_steps", "4", "--seed", "1"]))
    result = run_main(in_process, common + ["--max_train_steps", "2", "--seed", "2"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "holds another run (step_2, step_4)" in errors[0]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"]  # untouched
    assert_ok(run_main(in_process, common + ["--max_train_steps", "2", "--seed", "2", "--overwrite_output_dir"]))
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2"]
    assert [row["step"] for row in read_log(out)] == [1, 2]


@pytest.mark.parametrize("lr", ["1e6", "1e30"])  # (inf and nan are refused with the arguments)
def test_weights_made_non_finite_by_a_step_end_with_one_error_line(micro_folder, in_process, tmp_path, lr):
    """#16: a finite gradient times a huge learning rate overflows the weights; the run stops with one line."""
    out = tmp_path / "diverged"
    result = run_main(in_process, ["--model_name_or_path", str(micro_folder), "--output_dir", str(out),
                                   *data_args(tmp_path), "--max_train_steps", "4", "--per_device_train_batch_size",
                                   "4", "--eval_batches", "1", "--learning_rate", lr, "--max_grad_norm", "0",
                                   "--seed", "1"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and "non-finite" in errors[0], errors
    assert not (out / "model.safetensors").exists()
