"""examples/train_zonkey.py end to end on the micro preset and a small local corpus (offline):

- resuming (kill simulated with --stop_after_steps, then --resume_from_checkpoint latest next to a partial
  checkpoint) reproduces the uninterrupted run: same data, losses, learning rates, EMA and raw weights;
- an epoch reads every byte of the training split exactly once;
- a non-finite loss stops the run with one clear line and the last checkpoint intact and resumable;
- two CPU processes (configuration/accelerate-cpu-ddp-2.yaml) read different shards and write one checkpoint;
- the output folder loads with AutoModel / AutoTokenizer in a fresh process, with a filled model card.

Most tests run the script's main() in this process (conftest.script_in_process: the same code, without an
interpreter start and imports per run); a few run the real command line in a subprocess: its exit status, a fresh
process loading the output, several processes.
"""

import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main, script_in_process
from safetensors.torch import load_file

from modeling_zonkey.training.model_and_data import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_zonkey.py"
MICRO = ROOT / "configuration" / "zonkey-micro.json"
DDP2 = ROOT / "configuration" / "accelerate-cpu-ddp-2.yaml"
WORDS = ["the", "river", "was", "a", "city", "of", "known", "for", "its", "bridges", "Zürich", "café", "naïve",
         "encyclopedia", "東京", "is", "in", "and", "population", "1999"]
DOCUMENT_LENGTH = 128  # document_length[0] of the micro preset


def write_corpus(folder: Path) -> tuple[Path, Path, list[str]]:
    """40 articles as .jsonl: 32 train (every 5th longer than a document, one whitespace-only), 8 validation."""
    rng = random.Random(1234)
    texts = []
    for i in range(40):
        count = rng.randrange(45, 80) if i % 5 == 0 else rng.randrange(4, 22)
        text = " ".join(rng.choice(WORDS) for _ in range(count))
        if i % 7 == 3:
            text += "\n\nA second paragraph."
        texts.append(text)
    texts[6] = "   \n "
    folder.mkdir(parents=True, exist_ok=True)
    train, validation = folder / "train.jsonl", folder / "validation.jsonl"
    for path, rows in ((train, texts[:32]), (validation, texts[32:])):
        path.write_text("".join(json.dumps({"title": f"Article {i}", "text": t}, ensure_ascii=False) + "\n"
                                for i, t in enumerate(rows)), encoding="utf-8")
    assert sum(len(t.encode()) > DOCUMENT_LENGTH for t in texts[:32]) >= 5
    return train, validation, texts[:32]


def script_env(tmp: Path) -> dict:
    """Offline, one thread, caches under tmp, and no distributed variables leaking from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))
           and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp / "hf"), HF_DATASETS_CACHE=str(tmp / "hf" / "datasets"),
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    return env


def run(command: list[str], tmp: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env=script_env(tmp), capture_output=True, text=True, timeout=timeout)
    return result


def train_args(train: Path, validation: Path, output: Path, *extra) -> list[str]:
    return ["--config_name", str(MICRO), "--train_file", str(train), "--validation_file", str(validation),
            "--output_dir", str(output), "--per_device_eval_batch_size", "4", "--eval_batches", "1",
            "--eval_steps", "100", *extra]


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def assert_ok(result) -> None:
    """A finished run (subprocess.CompletedProcess or conftest.Finished) that exited 0."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


# ---------------------------------------------------------------- resume = uninterrupted run


RESUME_ARGS = ("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--max_train_steps", "8",
               "--checkpointing_steps", "4", "--ema_decay", "0.9", "--seed", "3", "--num_warmup_steps", "2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 8 optimizer steps in one go. B: the same command stopped after step 4 (same schedule), then resumed
    from "latest" while a partial .tmp-step_8 and a step_12 without state lie next to step_4."""
    tmp = tmp_path_factory.mktemp("resume")
    train, validation, texts = write_corpus(tmp / "data")
    a, b = tmp / "A", tmp / "B"
    with script_in_process(tmp) as script:
        result_a = run_main(script, train_args(train, validation, a, *RESUME_ARGS))
        assert_ok(result_a)
        result_b1 = run_main(script, train_args(train, validation, b, *RESUME_ARGS, "--stop_after_steps", "4"))
        assert_ok(result_b1)
        (b / ".tmp-step_8").mkdir()
        (b / ".tmp-step_8" / "model.safetensors").write_bytes(b"half a file")
        (b / "step_12").mkdir()
        result_b2 = run_main(script, train_args(train, validation, b, *RESUME_ARGS, "--resume_from_checkpoint",
                                                "latest"))
        assert_ok(result_b2)
    return {"tmp": tmp, "A": a, "B": b, "texts": texts, "B1": result_b1, "B2": result_b2}



def run_expecting_one_error(in_process, args, capsys) -> str:
    """Run the script's main in-process; it must exit 1 with exactly one `error:` line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        in_process.main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]

def test_resume_reproduces_the_uninterrupted_run(runs):
    a, b = runs["A"], runs["B"]
    assert "--stop_after_steps: stopped at step 4 of 8" in runs["B1"].stderr  # logged (stderr)
    assert f"resumed from {b / 'step_4'}: step 4, epoch 0, 8 batches into it" in runs["B2"].stderr
    log_a, log_b = read_log(a), read_log(b)
    assert [e["step"] for e in log_a] == list(range(1, 9)) and [e["step"] for e in log_b] == list(range(1, 9))
    # the resumed part crosses an epoch boundary (seedable sampler + set_epoch + skip_first_batches)
    assert log_a[3]["epoch"] == 0 and log_a[-1]["epoch"] == 1
    assert len({e["loss"] for e in log_a}) == 8 and all(np.isfinite(e["loss"]) for e in log_a)
    for entry_a, entry_b in zip(log_a, log_b):  # same batches, losses, lr schedule, gradient norms, bytes
        assert entry_a == entry_b
    # the same weights: raw (step_8 training state) and EMA (the saved model), bit for bit
    for name in ("step_8/model.safetensors", "model.safetensors"):
        weights_a, weights_b = load_file(a / name), load_file(b / name)
        assert weights_a.keys() == weights_b.keys() and len(weights_a) > 50
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (name, key)
    raw, ema = load_file(a / "step_8/model.safetensors"), load_file(a / "model.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the saved model is the EMA, not the raw weights
    results_a = json.loads((a / "train_results.json").read_text())
    results_b = json.loads((b / "train_results.json").read_text())
    assert results_a["train_bytes"] == results_b["train_bytes"] == log_a[-1]["train_bytes"]
    assert results_a["final_eval"] == results_b["final_eval"]
    assert sorted(p.name for p in b.glob("step_*")) == ["step_12", "step_4", "step_8"]
    # the resumed run knows where it restarted and its whole training time (the checkpoint records it)
    assert results_a["resumed_from_step"] is None and results_b["resumed_from_step"] == 4
    assert results_b["train_minutes"] > results_b["train_minutes_this_run"] > 0
    state = json.loads((b / "step_8" / "training_state.json").read_text())
    assert state["train_seconds"] > 0 and "resumed from its step-4 checkpoint" in (b / "README.md").read_text()
    assert "another model config" not in runs["B2"].stderr  # resumed with the config it was written with


def test_every_checkpoint_is_a_model_folder(runs):
    """step_N carries the config, generation config and tokenizer: from_pretrained loads its training weights,
    checkpoint_model its EMA (at the last step: the weights of the saved model)."""
    from transformers import AutoModel, AutoTokenizer

    from modeling_zonkey.training.checkpointing import checkpoint_model

    a = runs["A"]
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (a / "step_8" / name).is_file(), name
    trained = AutoModel.from_pretrained(a / "step_8")
    raw = load_file(a / "step_8" / "model.safetensors")
    assert all(torch.equal(trained.state_dict()[key], raw[key]) for key in raw)
    assert AutoTokenizer.from_pretrained(a / "step_8").decode([104, 105]) == "hi"
    averaged, final = checkpoint_model(a / "step_8", "ema").state_dict(), load_file(a / "model.safetensors")
    assert all(torch.equal(averaged[key], final[key]) for key in final)
    earlier = checkpoint_model(a / "step_4", "ema").state_dict()
    assert any(not torch.equal(earlier[key], final[key]) for key in final)


def test_an_epoch_reads_every_training_byte_once(runs):
    log = read_log(runs["A"])
    texts = [t for t in runs["texts"] if t.strip()]
    epoch0 = [e for e in log if e["epoch"] == 0]
    assert sum(sum(e["process_bytes"]) for e in epoch0) == sum(len(t.encode()) for t in texts)
    assert sum(sum(e["process_checksum"]) for e in epoch0) == sum(sum(t.encode()) for t in texts)
    train_stats = json.loads((runs["A"] / "train_results.json").read_text())["train_stats"]
    assert train_stats["articles"] == 32 and train_stats["skipped_empty"] == 1
    assert train_stats["bytes"] == sum(len(t.encode()) for t in texts)


def test_output_folder_loads_in_a_fresh_process(runs):
    out = runs["A"]
    code = f"""
import json, torch, modeling_zonkey
from transformers import AutoModel, AutoTokenizer
model, info = AutoModel.from_pretrained({str(out)!r}, output_loading_info=True)
tok = AutoTokenizer.from_pretrained({str(out)!r})
model.eval()
text = "The river Zürich was known for its bridges."
batch = tok([text, "a city"], return_tensors="pt", padding=True)
with torch.no_grad():
    out = model(**batch, return_loss=True)
    rec = model.reconstruct(**batch)
print(json.dumps({{"model": type(model).__name__, "tokenizer": type(tok).__name__,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]), "loss": out.loss.item(),
    "roundtrip": tok.decode(tok(text)["input_ids"], skip_special_tokens=True),
    "reconstructed": [len(r) for r in rec], "dtype": str(next(model.parameters()).dtype)}}))
"""
    result = run([sys.executable, "-c", code], runs["tmp"])
    assert_ok(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "ZonkeyModel" and report["tokenizer"] == "ZonkeyTokenizer"
    assert report["missing"] == [] and report["unexpected"] == []
    assert np.isfinite(report["loss"]) and report["dtype"] == "torch.float32"
    assert report["roundtrip"] == "The river Zürich was known for its bridges."
    assert len(report["reconstructed"]) == 2 and report["reconstructed"][0] > 0
    # the loaded weights are the saved ones (EMA), bit for bit
    saved = load_file(out / "model.safetensors")
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file() and len(saved) > 50


def test_model_card_is_filled(runs):
    card = (runs["A"] / "README.md").read_text()
    assert not re.search(r"\{[a-z_]+\}", card), re.findall(r"\{[a-z_]+\}", card)
    assert "8 optimizer steps" in card and "batch 4 x 1 process(es) x 2 accumulation" in card
    final = json.loads((runs["A"] / "train_results.json").read_text())["final_eval"]
    assert f"| val/loss | {final['val/loss']:.4f} |" in card
    assert "| parameters | 0.36 M |" in card


def test_validation_reports_the_collapse_diagnostics(runs):
    """Every evaluation logs how the decoder fares at high noise and whether p_bos saturate (issue #10)."""
    final = json.loads((runs["A"] / "train_results.json").read_text())["final_eval"]
    for t in ("0.3", "0.5", "1"):
        assert 0.0 <= final[f"val/level0/accuracy_t{t}"] <= 1.0
        assert -1.0 <= final[f"val/level1/cosine_t{t}"] <= 1.0
        for level in (0, 1):
            assert -1.0 <= final[f"val/level{level}/pairwise_cosine_t{t}"] <= 1.0
    for level in (0, 1):
        assert 0.0 <= final[f"val/level{level}/p_bos_saturated"] <= 1.0
    # level 1 is scored against sentence starts; its segments are at least as long as level 0's
    assert 0.0 <= final["val/level1/boundary_f1_inner"] <= final["val/level1/boundary_f1"] <= 1.0
    assert final["val/level1/bytes_per_segment"] >= final["val/bytes_per_segment"] > 1.0


# ---------------------------------------------------------------- non-finite loss (in-process, patched model)


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_nonfinite_loss_stops_with_last_checkpoint_intact(in_process, monkeypatch, tmp_path, capsys, what):
    """At the 5th training step the patched model returns a NaN loss, or a finite loss whose gradient is NaN
    (0 * sqrt(z) at z = 0, z depending on a weight)."""
    from modeling_zonkey import ZonkeyModel

    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "run"
    args = train_args(train, validation, out, "--per_device_train_batch_size", "2", "--max_train_steps", "6",
                      "--checkpointing_steps", "2")
    forward, calls = ZonkeyModel.forward, []

    def nan_at_fifth_training_step(self, *a, **k):
        output = forward(self, *a, **k)
        if self.training:
            calls.append(1)
            if len(calls) == 5 and what == "loss":
                output.loss = output.loss * float("nan")
            elif len(calls) == 5:
                weight = self.byte_embeddings.weight.sum()
                output.loss = output.loss + 0.0 * torch.sqrt(weight - weight.detach())
        return output

    monkeypatch.setattr(ZonkeyModel, "forward", nan_at_fifth_training_step)
    message = [run_expecting_one_error(in_process, args, capsys)]
    assert message[0].startswith(f"error: non-finite {what} at step 5 on process(es) [0]")
    assert f"Last good checkpoint: {out / 'step_4'}" in message[0] and "--learning_rate" in message[0]
    # step_4 is complete and finite; nothing of step 5 was written, no final model
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["step_2", "step_4"]
    assert json.loads((out / "step_4" / "training_state.json").read_text())["completed_steps"] == 4
    weights = load_file(out / "step_4" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "model.safetensors").exists()
    assert [e["step"] for e in read_log(out)] == [1, 2, 3, 4]
    # ... and usable: resume from it (model unpatched) and finish the 6 steps
    monkeypatch.setattr(ZonkeyModel, "forward", forward)
    in_process.main(args + ["--resume_from_checkpoint", "latest"])
    assert [e["step"] for e in read_log(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "model.safetensors").is_file() and (out / "step_6").is_dir()


# ---------------------------------------------------------------- two CPU processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_share_the_data(two_process_run):
    """Two CPU processes (conftest.two_process_run: 4 steps of batch 2 per process, checkpoints at 2 and 4) read
    different batches, log as run_clm_no_trainer, follow one lr schedule and write each checkpoint once."""
    from transformers import AutoModel

    import modeling_zonkey  # noqa: F401  (registers the Auto classes)

    out, result = two_process_run["A"], two_process_run["result"]
    output = result.stdout + result.stderr
    assert "4 optimizer steps, 12 per epoch, 2 process(es)" in output
    assert "process 0/2: 12 training batches per epoch" in output
    assert "process 1/2: 12 training batches per epoch" in output
    # #26: logged as run_clm_no_trainer logs: each process's accelerate state, through the script's logger
    for rank in (0, 1):
        assert re.search(rf"INFO - __main__ - \[RANK {rank}\] Distributed environment: .*Backend: gloo", result.stderr)
    assert re.search(r"INFO - __main__ - \[RANK 1\] process 1/2: 12 training batches per epoch", result.stderr)
    log = read_log(out)
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    for entry in log:  # each process trained on its own batch
        assert len(entry["process_bytes"]) == 2 and min(entry["process_bytes"]) > 0
        assert entry["process_checksum"][0] != entry["process_checksum"][1]
    assert log[-1]["train_bytes"] == sum(sum(e["process_bytes"]) for e in log)
    # the lr schedule counts optimizer steps, not process-steps: linear decay over 4 steps
    assert [e["lr"] for e in log] == pytest.approx([3e-4, 2.25e-4, 1.5e-4, 0.75e-4])
    # each checkpoint written once, with each process's RNG state
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["step_2", "step_4"]
    assert sorted(p.name for p in (out / "step_2").iterdir()) == [  # one of each, and the model folder's configs
        "config.json", "generation_config.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl",
        "random_states_1.pkl", "scheduler.bin", "tokenization_zonkey.py", "tokenizer_config.json",
        "training_state.json"]
    model = AutoModel.from_pretrained(out)
    saved = load_file(out / "step_4" / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_checkpoint_of_another_config_is_refused(runs, in_process, tmp_path, capsys):
    config = json.loads(MICRO.read_text())
    config["hidden_size"], config["num_cls_vectors"] = [32, 64], [2, 2]  # valid, but another model
    (tmp_path / "wider.json").write_text(json.dumps(config))
    train, validation, _ = write_corpus(tmp_path / "data")
    args = train_args(train, validation, tmp_path / "out", *RESUME_ARGS,
                      "--resume_from_checkpoint", str(runs["B"] / "step_4"))
    args[args.index("--config_name") + 1] = str(tmp_path / "wider.json")
    with pytest.raises(SystemExit) as exit_info:
        in_process.main(args)
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {runs['B'] / 'step_4'} does not fit this model")
    assert "size mismatch for byte_embeddings.weight" in errors[0] and len(errors[0]) < 1000


def test_fine_tuning_a_folder_under_a_preset(runs, tmp_path):
    """--model_name_or_path with --config_name: the folder's weights under the preset's config (a longer level-1
    window, longer documents), as transformers' run_clm reads the two flags."""
    import argparse

    config = json.loads(MICRO.read_text())
    config["window_length"][1], config["document_length"] = 9, [256, 96]
    (tmp_path / "longer.json").write_text(json.dumps(config))
    folder = runs["A"]
    model, tokenizer = build_model(argparse.Namespace(config_name=str(tmp_path / "longer.json"),
                                                                 model_name_or_path=str(folder), tokenizer_name=None,
                                                                 reinit_levels=None, freeze_levels=None))
    assert model.config.window_length[1] == 9 and model.config.document_length == [256, 96]
    assert tokenizer.model_max_length == 256
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(state[k], v) for k, v in saved.items())
    alone, _ = build_model(argparse.Namespace(config_name=None, model_name_or_path=str(folder),
                                                         tokenizer_name=None, reinit_levels=None, freeze_levels=None))
    assert alone.config.window_length == json.loads((folder / "config.json").read_text())["window_length"]


def test_resuming_a_finished_run_trains_no_further(runs, in_process, tmp_path, caplog):
    import shutil

    out = tmp_path / "done"
    shutil.copytree(runs["A"] / "step_8", out / "step_8")
    shutil.copy(runs["A"] / "train_log.jsonl", out / "train_log.jsonl")
    train, validation, _ = write_corpus(tmp_path / "data")
    in_process.main(train_args(train, validation, out, *RESUME_ARGS, "--resume_from_checkpoint", "latest"))
    assert "the checkpoint is at step 8 >= 8 optimizer steps: nothing to train" in caplog.text
    assert read_log(out) == read_log(runs["A"])
    # the EMA came back from the checkpoint: the saved model is the uninterrupted run's, bit for bit
    saved, reference = load_file(out / "model.safetensors"), load_file(runs["A"] / "model.safetensors")
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
