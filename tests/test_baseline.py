"""The flat byte-level baseline is sized to a target parameter count and generates with its KV cache."""

import json
from pathlib import Path

import pytest
import torch

from modeling_zonkey.evaluation.baseline import baseline_config, char_baseline


@pytest.mark.parametrize("target", [360_000, 2_177_686, 10_000_000])
def test_baseline_matches_the_target_size(target):
    model = char_baseline(target, context=256)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - target) / target < 0.1, (count, target)
    config = model.config
    assert config.vocab_size == 257 and config.pad_token_id == 256
    assert 32 * config.n_layer <= config.n_embd <= 64 * config.n_layer


def test_baseline_generates_bytes_with_a_cache():
    torch.manual_seed(0)
    model = char_baseline(200_000, context=64).eval()
    prompt = torch.tensor([[32, 116]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=256)
        plain = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=256)
    assert cached.shape == (1, 10) and torch.equal(cached, plain)


def test_too_small_baseline_is_refused():
    with pytest.raises(ValueError, match="too small"):
        baseline_config(1000)


def test_train_baseline_script_learns_and_saves(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    import datasets
    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import train_baseline as script
    finally:
        sys.path.pop(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"The {w} sat on the mat. A dog ran to the {w} and back, {i} times."
                                  for i, w in enumerate(["cat", "bird", "fox", "cow", "hen"] * 8)))
    out = tmp_path / "baseline"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(["--zonkey_config", "configuration/zonkey-micro.json", "--output_dir", str(out),
                            "--train_file", str(corpus), "--max_train_steps", "24", "--eval_steps", "8",
                            "--validation_split_percentage", "20", "--num_warmup_steps", "2"]) == 0
    finally:
        torch.set_num_threads(previous)
    import json
    results = json.loads((out / "train_results.json").read_text())
    curve = [bits for _, bits in results["curve"]]
    assert len(curve) == 3 and curve[-1] < 0.8 * curve[0], curve
    assert abs(results["num_parameters"] - results["zonkey_parameters"]) / results["zonkey_parameters"] < 0.1
    assert results["train_bytes_per_second"] > 0 and results["validation_bits_per_byte"] == curve[-1]
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.vocab_size == 257


@pytest.fixture
def baseline_script(tmp_path, monkeypatch):
    """examples/train_baseline.py imported (offline), and a small corpus file for it."""
    import datasets
    from conftest import import_script

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "train_baseline.py", "train_baseline")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"The {w} sat on the mat. A dog ran to the {w} and back, {i} times."
                                  for i, w in enumerate(["cat", "bird", "fox", "cow", "hen"] * 8)))
    return script, corpus


def test_train_baseline_script_continues_a_saved_baseline(tmp_path, baseline_script, capsys):
    from transformers import AutoModelForCausalLM

    script, corpus = baseline_script
    common = ["--zonkey_config", "configuration/zonkey-micro.json", "--train_file", str(corpus), "--eval_steps", "8",
              "--validation_split_percentage", "20", "--num_warmup_steps", "2", "--max_train_steps", "8"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(common + ["--output_dir", str(tmp_path / "first")]) == 0
        assert script.main(common + ["--output_dir", str(tmp_path / "second"),
                                     "--model_name_or_path", str(tmp_path / "first")]) == 0
        assert script.main(common + ["--output_dir", str(tmp_path / "third"),
                                     "--model_name_or_path", str(tmp_path / "nothing")]) == 1
        assert "no saved baseline there" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)
    first, second = (json.loads((tmp_path / name / "train_results.json").read_text()) for name in ("first", "second"))
    assert second["continued_from"] == str(tmp_path / "first") and first["continued_from"] is None
    assert second["total_train_minutes"] == pytest.approx(first["train_minutes"] + second["train_minutes"])
    assert (first["total_completed_steps"], second["total_completed_steps"]) == (8, 16)  # every stage's steps
    # same seed and data: a fresh start would repeat the first stage exactly; the continued one goes further
    assert second["validation_bits_per_byte"] < first["validation_bits_per_byte"]
    weights = [AutoModelForCausalLM.from_pretrained(tmp_path / name).transformer.wte.weight for name in
               ("first", "second")]
    assert not torch.equal(*weights)


def test_train_baseline_script_resumes_its_checkpoint_exactly(tmp_path, baseline_script, capsys):
    from safetensors.torch import load_file

    script, corpus = baseline_script
    out = tmp_path / "run"
    args = ["--zonkey_config", "configuration/zonkey-micro.json", "--train_file", str(corpus), "--eval_steps", "4",
            "--validation_split_percentage", "20", "--num_warmup_steps", "2", "--max_train_steps", "12",
            "--per_device_train_batch_size", "3", "--checkpointing_steps", "5", "--output_dir", str(out)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(args) == 0
        uninterrupted = load_file(out / "model.safetensors")
        results = json.loads((out / "train_results.json").read_text())
        assert sorted(p.name for p in out.glob("step_*")) == ["step_10", "step_5"]
        # from step 5 (mid-epoch: more than 5 batches of 3 per epoch) to the end again: the same weights
        assert script.main(args + ["--resume_from_checkpoint", str(out / "step_5")]) == 0
        resumed = load_file(out / "model.safetensors")
        again = json.loads((out / "train_results.json").read_text())
        assert script.main(args + ["--learning_rate", "1e-3", "--resume_from_checkpoint", "latest"]) == 1
        assert "--learning_rate 0.002 -> 0.001" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert again["curve"] == results["curve"] and again["train_bytes"] == results["train_bytes"]
    assert again["completed_steps"] == 12 and again["train_minutes"] >= 0
