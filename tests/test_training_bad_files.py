"""examples/train_zonkey.py given bad data or config files (missing, empty, not UTF-8, no text, invalid JSON or
config, nothing to resume) or a push without a token: one `error: ...` line and exit status 1, never a traceback,
and a failed push keeps the trained model on disk (conftest.in_process; one real command line)."""

import json
import sys
from pathlib import Path

import pytest
from test_training import MICRO, SCRIPT, run, run_expecting_one_error, train_args, write_corpus


def bad_inputs(tmp_path: Path) -> dict:
    good, validation, _ = write_corpus(tmp_path / "data")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("Zürich café\n\nnaïve".encode("latin-1"))
    (tmp_path / "blank.jsonl").write_text('{"text": "   "}\n{"text": ""}\n')
    (tmp_path / "bad.json").write_text('{"model_type": "zonkey", "num_levels": 2,')
    config = json.loads(MICRO.read_text())
    config["hidden_size"] = [16]
    (tmp_path / "invalid.json").write_text(json.dumps(config))
    return {"good": good, "validation": validation}


@pytest.mark.parametrize("case, message", [
    ("missing_train", "error: Data file not found: {tmp}/nope.jsonl"),
    ("empty_train", "error: Data file {tmp}/empty.jsonl is empty"),
    ("latin1_train", "error: {tmp}/latin1.txt is not UTF-8 text (invalid byte 0xfc at offset 1)"),
    ("blank_train", "error: {tmp}/blank.jsonl contains no text"),
    ("missing_config", "error: --config_name {tmp}/none.json: no such file"),
    ("bad_json_config", "error: --config_name {tmp}/bad.json is not a valid JSON config file"),
    ("invalid_config", "error: ZonkeyConfig: hidden_size has 1 entries but num_levels = 2"),
    ("no_checkpoint", "error: --resume_from_checkpoint latest: no complete checkpoint"),
])
def test_bad_inputs_give_one_clear_line(in_process, tmp_path, capsys, case, message):
    files = bad_inputs(tmp_path)
    train, config, extra = files["good"], str(MICRO), []
    train = {"missing_train": tmp_path / "nope.jsonl", "empty_train": tmp_path / "empty.jsonl",
             "latin1_train": tmp_path / "latin1.txt", "blank_train": tmp_path / "blank.jsonl"}.get(case, train)
    config = {"missing_config": tmp_path / "none.json", "bad_json_config": tmp_path / "bad.json",
              "invalid_config": tmp_path / "invalid.json"}.get(case, config)
    if case == "no_checkpoint":
        extra = ["--resume_from_checkpoint", "latest"]
    args = train_args(train, files["validation"], tmp_path / "out", "--max_train_steps", "1", *extra)
    args[args.index("--config_name") + 1] = str(config)
    errors = [run_expecting_one_error(in_process, args, capsys)]
    assert errors[0].startswith(message.format(tmp=tmp_path)), errors[0]


def test_bad_file_from_the_command_line(tmp_path):
    """The real CLI: exit status 1 and one `error:` line on stderr, no traceback."""
    files = bad_inputs(tmp_path)
    result = run([sys.executable, str(SCRIPT), *train_args(tmp_path / "latin1.txt", files["validation"],
                                                           tmp_path / "out", "--max_train_steps", "1")], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/latin1.txt is not UTF-8 text")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_failed_push_keeps_the_trained_model(in_process, tmp_path, capsys, monkeypatch):
    """--push_to_hub without a token: one clear error, and the model, card and results are saved locally."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "out"
    args = train_args(train, validation, out, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "org/zonkey")
    error = run_expecting_one_error(in_process, args, capsys)
    assert "no Hugging Face token" in error and f"The trained model is saved in {out}" in error
    assert "examples/push_to_hub.py" in error
    for name in ("model.safetensors", "config.json", "README.md", "train_results.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert 'from_pretrained("org/zonkey"' in (out / "README.md").read_text()
