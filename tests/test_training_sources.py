"""examples/train_zonkey.py: fine-tuning from a Hub id (offline, from a cached snapshot), a separate tokenizer,
and --checkpoints_total_limit (issue #15)."""

import sys


from test_hub import fake_snapshot
from test_training import SCRIPT, assert_ok, read_log, run, write_corpus

FINE_TUNE = ("--max_train_steps", "2", "--per_device_train_batch_size", "4", "--eval_batches", "1", "--seed", "1")


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
