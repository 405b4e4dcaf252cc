"""examples/evaluate.py's samples of a given number of new bytes (--max_new_tokens), and the baseline's as long."""

import json
from pathlib import Path

import pytest
import torch
from conftest import import_script
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_zonkey.evaluation.suite import (
    EvaluationSettings,
    baseline_sampler,
    evaluate_model,
    generation_metrics,
    zonkey_sampler,
)
from modeling_zonkey.evaluation.tables import generation_markdown

pytestmark = pytest.mark.usefixtures("single_thread")


def uniform_judge() -> GPT2LMHeadModel:
    """A byte-level judge LM whose next-byte distribution is uniform: perplexity 257 on any text."""
    judge = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        judge.transformer.wte.weight.zero_()  # tied head: every logit 0
    return judge


def test_samples_have_the_new_bytes_asked_for_and_the_table_says_so(make_model, tokenizer):
    model = make_model(seed=2)
    settings = EvaluationSettings(seeds=(0, 1), samples_per_seed=2, num_steps=2, max_new_tokens=100)
    texts = zonkey_sampler(model, tokenizer, settings)(0)
    window = zonkey_sampler(model, tokenizer, EvaluationSettings(samples_per_seed=2, num_steps=2))(0)
    assert len(texts) == 2
    # 100 new bytes are more than one micro window holds (an invalid byte decodes to one character)
    assert all(max(len(w) for w in window) < len(t) <= 100 for t in texts), (texts, window)
    real = [b"The cat sat on the mat and the dog ran to the cat and back. " * 3] * 4
    result = generation_metrics(zonkey_sampler(model, tokenizer, settings), uniform_judge(), tokenizer, real,
                                {"the", "cat"}, set(), settings)
    assert result["max_new_tokens"] == 100 and result["seeds"] == [0, 1]
    assert result["samples"]["judge_perplexity"]["mean"] == pytest.approx(257, rel=1e-4)
    # the real column is cut to the samples' lengths
    assert result["real"]["mean_bytes"]["mean"] == pytest.approx(result["samples"]["mean_bytes"]["mean"])
    torch.manual_seed(1)
    baseline = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1, n_head=2)).eval()
    length = round(result["samples"]["mean_bytes"]["mean"])
    assert all(0 < len(t) <= length for t in baseline_sampler(baseline, 2, length)(0))

    table = generation_markdown(result)
    assert "100 new bytes each" in table[0] and "baseline samples" not in table[2], table[:3]


def test_evaluate_script_refuses_a_length_that_is_not_positive(capsys):
    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "evaluate.py", "evaluate_script")
    with pytest.raises(SystemExit):
        script.parse_args(["some/folder", "--max_new_tokens", "0"])
    assert "--max_new_tokens must be a positive number of bytes" in capsys.readouterr().err
    assert script.parse_args(["some/folder", "--max_new_bytes", "300"]).max_new_tokens == 300


def test_the_table_says_how_long_the_baseline_trained(tmp_path):
    import json

    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "evaluate.py", "evaluate_script")
    assert script.baseline_training(tmp_path) is None  # a baseline without its training record
    record = {"completed_steps": 950, "train_minutes": 30.0, "total_train_minutes": 82.84,
              "validation_bits_per_byte": 3.5367}
    (tmp_path / "train_results.json").write_text(json.dumps(record))
    training = script.baseline_training(tmp_path)
    assert training == {"minutes": 82.84, "steps": 950, "bits_per_byte": 3.5367}  # every stage's minutes
    (tmp_path / "train_results.json").write_text(json.dumps({**record, "total_completed_steps": 3550}))
    assert script.baseline_training(tmp_path)["steps"] == 3550  # and every stage's steps, where recorded
    cell = {"mean": 1.0, "std": 0.0}
    generation = {"samples_per_seed": 2, "seeds": [0], "num_steps": 5, "samples": {"div": cell}, "real": {"div": cell},
                  "examples": []}
    header = generation_markdown(generation, {"samples": {"div": cell}, "examples": [], "training": training})[0]
    assert "baseline = the byte-level GPT-2 (82.8 minutes of training, 950 steps, 3.54 bits per byte on validation)" \
        in header, header
    assert "minutes of training" not in generation_markdown(generation, {"samples": {"div": cell}, "examples": []})[0]
    # a baseline column reused from an evaluation written before a metric existed says so instead of failing
    newer = {**generation, "samples": {"div": cell, "long_word_share": cell}, "real": {"div": cell,
                                                                                       "long_word_share": cell}}
    rows = generation_markdown(newer, {"samples": {"div": cell}, "examples": []})
    assert "| long_word_share | 1.000 +- 0.000 | 1.000 +- 0.000 | not measured |" in rows, rows


def test_a_baseline_asked_for_more_bytes_than_its_context_says_so():
    """A baseline of 256 positions cannot write 300 bytes after its prompt: a ValueError naming both numbers and the
    fix, not the IndexError of GPT-2's position embedding."""
    baseline = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match=r"reads at most 256 bytes.*samples of 300 bytes.*at most 255"):
        baseline_sampler(baseline, 2, 300)
    assert len(baseline_sampler(baseline, 1, 255)(0)) == 1  # the longest that fits still samples


def test_a_baseline_samples_at_a_temperature():
    """temperature divides the baseline's logits: 1 is the default, a lower one samples other (seeded, repeatable)
    bytes, and one that is not positive is a ValueError naming it."""
    torch.manual_seed(2)
    baseline = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    default, warm, cool = (baseline_sampler(baseline, 3, 40, *t)(0) for t in ((), (1.0,), (0.3,)))
    assert default == warm and cool == baseline_sampler(baseline, 3, 40, 0.3)(0) and cool != default
    for temperature in (0, -1.0, True):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            baseline_sampler(baseline, 3, 40, temperature)


def test_evaluation_refuses_a_too_short_baseline_before_any_work(make_model, tokenizer, monkeypatch):
    """The length check runs before Zonkey's metrics and samples (which take minutes on a real model), not after."""
    import modeling_zonkey.evaluation.suite as suite

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation started before the baseline's length was checked")

    monkeypatch.setattr(suite, "segmentation_metrics", no_work)
    baseline = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1, n_head=2)).eval()
    settings = EvaluationSettings(samples_per_seed=2, num_steps=2, max_new_tokens=300)
    with pytest.raises(ValueError, match=r"reads at most 256 bytes.*samples of 300 bytes"):
        evaluate_model(make_model(seed=2), tokenizer, [b"The cat sat."], settings, uniform_judge(), tokenizer,
                       ["The cat sat."], baseline)


def test_a_recorded_baseline_is_reused_only_where_it_was_measured_the_same_way(tmp_path):
    from modeling_zonkey.evaluation.baseline import check_recorded_length, held_out_digest, recorded_baseline

    documents = [b"The cat sat.", b"A dog ran to the cat."]
    settings = EvaluationSettings(seeds=(0, 1, 2), samples_per_seed=16, max_new_tokens=300)
    column = {"seeds": [0, 1, 2], "samples_per_seed": 16, "samples": {"mean_bytes": {"mean": 300.0, "std": 0.0}}}
    evaluation = {"documents": 2, "bytes": 33, "judge": "judge", "model": "old/folder", "baseline_generation": column,
                  "generation": {"max_new_tokens": 300, "samples": {"mean_bytes": {"mean": 299.8, "std": 0.2}}}}
    record = tmp_path / "evaluation.json"
    record.write_text(json.dumps(evaluation))  # written before digests were recorded: counts and bytes compared
    reused = recorded_baseline(record, documents, settings, "judge", "default")
    assert reused == dict(column, recorded_in=str(record), recorded_with="old/folder", sample_length=300)
    with pytest.raises(ValueError, match=r"seeds \[0, 1, 2\] there, \[0, 1\] here; samples_per_seed 16 there, 8"):
        recorded_baseline(record, documents, EvaluationSettings(seeds=(0, 1), samples_per_seed=8,
                                                                max_new_tokens=300), "judge", "default")
    with pytest.raises(ValueError, match="max_new_tokens 300 there, None here"):  # refused before any sample
        recorded_baseline(record, documents, EvaluationSettings(seeds=(0, 1, 2)), "judge", "default")
    with pytest.raises(ValueError, match="bytes 33 there, 12 here"):
        recorded_baseline(record, documents[:1], settings, "judge", "default")
    with pytest.raises(ValueError, match="judge 'judge' there, 'other' here"):
        recorded_baseline(record, documents, settings, "other", "default")
    # where the digest and the corpus are recorded, they are compared: same lengths, other text is refused
    record.write_text(json.dumps(dict(evaluation, held_out_sha256=held_out_digest(documents),
                                      training_corpus="default")))
    assert recorded_baseline(record, documents, settings, "judge", "default")["sample_length"] == 300
    with pytest.raises(ValueError, match="held_out_sha256"):
        recorded_baseline(record, [b"The cat ran.", b"A dog sat on the cat."], settings, "judge", "default")
    with pytest.raises(ValueError, match="training_corpus 'default' there, 'my.txt' here"):
        recorded_baseline(record, documents, settings, "judge", "my.txt")
    # a column reused again keeps where it was judged
    again = tmp_path / "again.json"
    again.write_text(json.dumps(dict(evaluation, baseline_generation=reused, model="new/folder")))
    assert recorded_baseline(again, documents, settings, "judge", "default")["recorded_in"] == str(record)
    record.write_text(json.dumps({"documents": 2, "bytes": 33, "judge": "judge"}))
    with pytest.raises(ValueError, match="holds no baseline column: evaluate with --baseline_model first"):
        recorded_baseline(record, documents, settings, "judge", "default")
    with pytest.raises(ValueError, match="not a readable evaluation.json"):
        recorded_baseline(tmp_path / "missing.json", documents, settings, "judge", "default")
    check_recorded_length(reused, {"samples": {"mean_bytes": {"mean": 300.4}}})
    with pytest.raises(ValueError, match="are 300 bytes long and this model's 250"):
        check_recorded_length(reused, {"samples": {"mean_bytes": {"mean": 250.0}}})


def test_evaluate_script_takes_one_baseline(capsys):
    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "evaluate.py", "evaluate_script")
    for extra in (["--baseline_model", "b"], ["--no_generation"]):
        with pytest.raises(SystemExit):
            script.parse_args(["some/folder", "--baseline_results", "e.json"] + extra)
    err = capsys.readouterr().err
    assert "give --baseline_model or --baseline_results, not both" in err and "leave out --no_generation" in err
