"""examples/train_zonkey.py: fine-tuning from a Hub id (offline, from a cached snapshot), a separate tokenizer,
and --checkpoints_total_limit (issue #15)."""

import sys

import pytest

from test_hub import fake_snapshot
from test_training import SCRIPT, assert_ok, read_log, run, write_corpus

FINE_TUNE = ("--max_train_steps", "2", "--per_device_train_batch_size", "4", "--eval_batches", "1", "--seed", "1")


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory, make_model, tokenizer):
    folder = tmp_path_factory.mktemp("micro")
    make_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def data_args(tmp):
    train, validation, _ = write_corpus(tmp / "data")
    return ["--train_file", str(train), "--validation_file", str(validation)]


def test_fine_tune_from_a_hub_id_in_the_cache_offline(micro_folder, tmp_path):
    fake_snapshot(tmp_path / "hf", "org/zonkey-micro", micro_folder)  # script_env sets HF_HOME=tmp/hf, offline
    out = tmp_path / "from-hub"
    result = run([sys.executable, str(SCRIPT), "--model_name_or_path", "org/zonkey-micro", "--tokenizer_name",
                  str(micro_folder), "--output_dir", str(out), *data_args(tmp_path), *FINE_TUNE], tmp_path)
    assert_ok(result)
    assert [row["step"] for row in read_log(out)] == [1, 2]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_an_unknown_hub_id_is_one_error_line(tmp_path):
    result = run([sys.executable, str(SCRIPT), "--model_name_or_path", "org/does-not-exist", "--output_dir",
                  str(tmp_path / "x"), *data_args(tmp_path), *FINE_TUNE], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "--model_name_or_path org/does-not-exist: not a local folder" in errors[0]


def test_checkpoints_total_limit_keeps_the_newest(micro_folder, tmp_path):
    out = tmp_path / "limited"
    common = [sys.executable, str(SCRIPT), "--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--max_train_steps", "6", "--per_device_train_batch_size", "4",
              "--eval_batches", "1", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--seed", "1"]
    assert_ok(run(common + ["--stop_after_steps", "4"], tmp_path))
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"]
    result = run(common + ["--resume_from_checkpoint", "latest"], tmp_path)
    assert_ok(result)
    assert sorted(p.name for p in out.glob("step_*")) == ["step_4", "step_6"]
    assert "removed step_2" in result.stderr + result.stdout
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4, 5, 6]


class Payload:
    """Unpickling this runs a command (what a crafted checkpoint file could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ema_state_is_safetensors_and_no_pickle_is_trusted(micro_folder, tmp_path):
    """#16: the EMA weights are saved as ema.safetensors; a checkpoint holding a pickle is refused with one error
    line before anything unpickles it; without ema.safetensors the EMA restarts, with a warning."""
    import pickle

    out, marker = tmp_path / "ema", tmp_path / "pwned"
    common = [sys.executable, str(SCRIPT), "--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--max_train_steps", "4", "--per_device_train_batch_size", "4", "--eval_batches",
              "1", "--checkpointing_steps", "2", "--ema_decay", "0.9", "--seed", "1"]
    assert_ok(run(common + ["--stop_after_steps", "2"], tmp_path))
    step = out / "step_2"
    assert (step / "ema.safetensors").is_file() and not list(step.glob("custom_checkpoint_*"))
    (step / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    result = run(common + ["--resume_from_checkpoint", "latest"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "holds pickled objects" in errors[0], result.stderr[-2000:]
    assert not marker.exists()
    (step / "custom_checkpoint_0.pkl").unlink()
    (step / "ema.safetensors").unlink()
    result = run(common + ["--resume_from_checkpoint", "latest"], tmp_path)
    assert_ok(result)
    assert "has no ema.safetensors; the EMA restarts" in result.stdout + result.stderr
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4]


def test_a_reused_output_dir_is_refused_unless_overwritten(micro_folder, tmp_path):
    """#16: a fresh run in a folder holding another run's checkpoints would mix the two on the next resume."""
    out = tmp_path / "reused"
    common = [sys.executable, str(SCRIPT), "--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--per_device_train_batch_size", "4", "--eval_batches", "1",
              "--checkpointing_steps", "2"]
    assert_ok(run(common + ["--max_train_steps", "4", "--seed", "1"], tmp_path))
    result = run(common + ["--max_train_steps", "2", "--seed", "2"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "holds another run (step_2, step_4)" in errors[0]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"]  # untouched
    assert_ok(run(common + ["--max_train_steps", "2", "--seed", "2", "--overwrite_output_dir"], tmp_path))
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2"]
    assert [row["step"] for row in read_log(out)] == [1, 2]


@pytest.mark.parametrize("lr", ["1e6", "inf"])
def test_weights_made_non_finite_by_a_step_end_with_one_error_line(micro_folder, tmp_path, lr):
    """#16: a finite gradient times a huge learning rate overflows the weights; the run stops with one line."""
    out = tmp_path / "diverged"
    result = run([sys.executable, str(SCRIPT), "--model_name_or_path", str(micro_folder), "--output_dir", str(out),
                  *data_args(tmp_path), "--max_train_steps", "4", "--per_device_train_batch_size", "4",
                  "--eval_batches", "1", "--learning_rate", lr, "--max_grad_norm", "0", "--seed", "1"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and "non-finite" in errors[0], errors
    assert not (out / "model.safetensors").exists()
