"""examples/train_zonkey.py: fine-tuning from a Hub id (offline, from a cached snapshot), a separate tokenizer,
--checkpoints_total_limit, and --streaming a dataset folder (issue #15)."""

import json
import sys

import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file
from test_hub import fake_snapshot
from test_training import SCRIPT, assert_ok, read_log, run, write_corpus

from modeling_zonkey.training.data import articles_to_documents

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


def test_checkpoints_total_limit_keeps_the_newest(micro_folder, in_process, tmp_path):
    out = tmp_path / "limited"
    common = ["--model_name_or_path", str(micro_folder), "--output_dir", str(out),
              *data_args(tmp_path), "--max_train_steps", "6", "--per_device_train_batch_size", "4",
              "--eval_batches", "1", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--seed", "1"]
    assert_ok(run_main(in_process, common + ["--stop_after_steps", "4"]))
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"]
    result = run_main(in_process, common + ["--resume_from_checkpoint", "latest"])
    assert_ok(result)
    assert sorted(p.name for p in out.glob("step_*")) == ["step_4", "step_6"]
    assert "removed step_2" in result.stderr + result.stdout
    assert [row["step"] for row in read_log(out)] == [1, 2, 3, 4, 5, 6]


def test_streaming_a_dataset_folder_resumes_exactly(micro_folder, in_process, tmp_path):
    """--streaming reads a dataset folder lazily (no Arrow cache written), validates on its first articles (which
    training skips), and a run stopped in its first pass and resumed in the second equals the uninterrupted one."""
    train, _, texts = write_corpus(tmp_path / "data")
    (tmp_path / "dataset").mkdir()
    train.rename(tmp_path / "dataset" / "train.jsonl")
    common = ["--model_name_or_path", str(micro_folder), "--dataset_name",
              str(tmp_path / "dataset"), "--streaming", "--streaming_validation_articles", "4",
              "--max_train_steps", "8", "--per_device_train_batch_size", "8", "--checkpointing_steps", "3",
              "--eval_batches", "1", "--seed", "1"]
    a, b = tmp_path / "A", tmp_path / "B"
    result = run_main(in_process, common + ["--output_dir", str(a)])
    assert_ok(result)
    assert "train: streamed from" in result.stderr and "validation: 4 articles" in result.stderr
    assert_ok(run_main(in_process, common + ["--output_dir", str(b), "--stop_after_steps", "3"]))
    resumed = run_main(in_process, common + ["--output_dir", str(b), "--resume_from_checkpoint", "latest"])
    assert_ok(resumed)
    log_a, log_b = read_log(a), read_log(b)
    documents = len(articles_to_documents(texts[4:], 128)["input_ids"])  # 4 of the 32 articles held out
    per_pass = -(-documents // 8)
    assert 1 < per_pass < 8 and [row["epoch"] for row in log_a] == [0] * per_pass + [1] * (8 - per_pass)
    held_in = sum(len(t.encode()) for t in texts[4:] if t.strip())  # whitespace-only articles make no document
    assert sum(sum(row["process_bytes"]) for row in log_a[:per_pass]) == held_in
    assert [(r["loss"], r["process_checksum"]) for r in log_a] == [(r["loss"], r["process_checksum"]) for r in log_b]
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not list((tmp_path / "hf").rglob("*.arrow"))
    results = json.loads((a / "train_results.json").read_text())
    assert results["train_stats"] is None and results["validation_stats"]["articles"] == 4


@pytest.mark.parametrize("extra, message", [
    (["--train_file", "x.jsonl", "--max_train_steps", "2"], "--streaming reads a --dataset_name"),
    (["--dataset_name", "org/data"], "needs --max_train_steps"),
])
def test_streaming_needs_a_dataset_and_a_step_count(in_process, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        in_process.parse_args(["--config_name", "c.json", "--output_dir", str(tmp_path), "--streaming", *extra])
    assert message in capsys.readouterr().err
