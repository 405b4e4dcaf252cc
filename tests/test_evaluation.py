"""Evaluation metrics on hand-made cases, the judge's perplexity, and examples/evaluate.py end to end."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_script
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_zonkey.evaluation.metrics import (
    average_precision,
    binary_entropy,
    boundary_scores,
    mean_and_cv,
    over_segmentation,
    r_value,
    segment_lengths,
    sentence_starts,
    word_starts,
)
from modeling_zonkey.evaluation.suite import judge_perplexity
from modeling_zonkey.evaluation.text_statistics import (
    LONG_WORD,
    diversity,
    entropy_bits,
    length_statistics,
    long_word_share,
    memorisation,
    training_ngrams,
    vocabulary_share,
    words,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------ segmentation
def test_word_and_sentence_starts():
    text = b"The cat sat.  A dog ran! Why? no."
    assert word_starts(text) == [0, 4, 8, 14, 16, 20, 25, 30]
    assert sentence_starts(text) == [0, 14, 25, 30]
    assert sentence_starts(b"") == [] and sentence_starts(b"e.g.x") == [0]


def test_boundary_scores_perfect_shifted_oversegmented_and_empty():
    gold = [[0, 4, 8]]
    perfect = boundary_scores(gold, gold)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    shifted = [[1, 5, 9]]
    assert boundary_scores(shifted, gold).f1 == 0.0
    assert boundary_scores(shifted, gold, tolerance=1).f1 == 1.0
    over = boundary_scores([[0, 2, 4, 6, 8, 10]], gold)
    assert (over.precision, over.recall) == (0.5, 1.0)
    assert over_segmentation(over.predicted, over.gold) == 1.0
    empty = boundary_scores([[]], gold)
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)
    assert boundary_scores([], []).f1 == 0.0


def test_r_value_and_auprc():
    assert r_value(1.0, 0.0) == pytest.approx(1.0)
    assert r_value(0.5, 0.0) < r_value(0.9, 0.0) < 1.0
    assert r_value(1.0, 1.0) < 1.0  # over-segmentation costs even at full recall
    labels = [True, False, True, False]
    assert average_precision([0.9, 0.1, 0.8, 0.2], labels) == 1.0  # positives ranked first
    assert average_precision([0.1, 0.9, 0.2, 0.8], labels) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision([0.5] * 4, labels) == pytest.approx((1 / 3 + 2 / 4) / 2)  # ties: pessimistic
    assert average_precision([0.3], [False]) == 0.0


def test_segment_lengths_entropy_and_cv():
    assert segment_lengths([0, 4, 8], 10) == [4, 4, 2]
    assert mean_and_cv([4, 4, 4]) == (4.0, 0.0)
    assert mean_and_cv([2, 6])[1] == pytest.approx(0.5)
    h = binary_entropy(torch.tensor([0.0, 0.5, 1.0]))
    assert h.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-9)


# -------------------------------------------------------------------------------------- generation
def test_text_statistics_on_known_texts():
    assert words("It's a Cat, a cat!") == ["it's", "a", "cat", "a", "cat"]
    assert entropy_bits("abab") == pytest.approx(1.0) and entropy_bits("") == 0.0
    assert diversity(["one two three four five six"]) == 1.0
    assert diversity(["la la la la la la"]) == pytest.approx((1 / 5) * (1 / 4) * (1 / 3))
    seen = training_ngrams(["the cat sat on the mat today"])
    assert memorisation(["the cat sat on", "dogs run far away"], seen) == 0.5
    assert vocabulary_share(["the dog"], {"the", "cat"}) == 0.5
    # the long words (LONG_WORD = 5 characters or more) apart: "kitten" is real, "dogged" is not, "the" is short
    assert vocabulary_share(["the kitten dogged"], {"the", "kitten"}, min_length=LONG_WORD) == 0.5
    assert long_word_share(["the kitten dogged"]) == pytest.approx(2 / 3) and long_word_share([""]) == 0.0
    stats = length_statistics(["ab cd. efgh!"])
    assert stats["word_length_mean"] == pytest.approx(8 / 3) and stats["sentence_length_mean"] == 1.5


def test_judge_perplexity_of_a_uniform_judge_is_its_vocabulary_size(tokenizer):
    torch.manual_seed(0)
    judge = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        judge.transformer.wte.weight.zero_()  # tied head: every logit 0, a uniform next-byte distribution
    assert judge_perplexity(judge, tokenizer, ["hello there", "a cat"]) == pytest.approx(257, rel=1e-4)
    torch.manual_seed(1)
    trained_like = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    assert judge_perplexity(trained_like, tokenizer, ["hello there"]) != pytest.approx(257, rel=1e-3)
    assert math.isnan(judge_perplexity(judge, tokenizer, ["x"]))  # nothing to score


# ---------------------------------------------------------------------------------------- end to end
def test_evaluate_script_writes_every_key_and_picture(make_model, tokenizer, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import evaluate as script
    finally:
        sys.path.pop(0)
    model_dir, judge_dir = tmp_path / "model", tmp_path / "judge"
    make_model(seed=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)  # a tiny stand-in judge: a random byte-level causal LM with the byte tokenizer
    GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1,
                               n_head=2)).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    baseline_dir = tmp_path / "baseline"
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=256, n_embd=32, n_layer=1,
                               n_head=2)).save_pretrained(baseline_dir)
    corpus = tmp_path / "corpus.txt"
    paragraphs = [f"The {w} sat on the mat. A dog ran to the {w} and back again, {i} times." for i, w in
                  enumerate(["cat", "bird", "fox", "cow", "hen", "owl", "pig", "rat"] * 4)]
    corpus.write_text("\n\n".join(paragraphs))
    out = tmp_path / "eval"
    code = script.main([str(model_dir), "--train_file", str(corpus), "--text_file", str(corpus),
                        "--max_documents", "6", "--noise_levels", "0", "0.3", "--seeds", "0", "1",
                        "--samples_per_seed", "2", "--num_steps", "3", "--judge_model", str(judge_dir),
                        "--output_dir", str(out), "--baseline_model", str(baseline_dir)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "evaluation.json").read_text())
    assert results["documents"] == 6
    for level in ("level0", "level1"):
        metrics = results["segmentation"][level]
        for key in ("precision", "recall", "f1", "precision_pm1", "recall_pm1", "f1_pm1", "precision_inner",
                    "recall_inner", "f1_inner", "auprc",
                    "over_segmentation", "r_value", "bytes_per_segment", "bytes_per_segment_cv",
                    "p_bos_entropy_bits", "p_bos_share_uncertain", "p_bos_saturated"):
            assert math.isfinite(metrics[key]), (level, key)
        assert 0.0 <= metrics["f1"] <= metrics["f1_pm1"] <= 1.0
        # every document's first byte is a forced hit: without it, precision and recall can only fall
        assert metrics["precision_inner"] <= metrics["precision"] and metrics["recall_inner"] <= metrics["recall"]
        assert 0.0 <= metrics["precision_inner_chance"] <= 1.0 and 0.0 <= metrics["f1_inner_chance"] <= 1.0
    assert set(results["reconstruction"]) == {"t=0", "t=0.3"}
    for per_level in results["reconstruction"].values():
        for metrics in per_level.values():
            assert set(metrics) == {"byte_accuracy", "cer", "exact_segment_match"}
            assert 0.0 <= metrics["byte_accuracy"] <= 1.0 and metrics["cer"] >= 0.0
    assert 0.0 <= results["stitcher"]["overlap_disagreement"] <= 1.0
    for level in ("level0", "level1"):
        inferred = results["stitcher"]["inferred_offsets"][level]
        assert 0.0 <= inferred["byte_accuracy"] <= 1.0 and inferred["cer"] >= 0.0
    for level, scores in (("level0", {"accuracy", "true_byte_probability", "expected_accuracy"}),
                          ("level1", {"cosine"})):
        assert set(results["denoiser"][level]) == {"t=0", "t=0.3"}
        for metrics in results["denoiser"][level].values():
            assert set(metrics) == scores | {"pairwise_cosine", "target_pairwise_cosine"}
            assert all(-1.0 <= value <= 1.0 for value in metrics.values())
    hierarchy = results["hierarchy"]["level1"]
    assert set(hierarchy["sensitivity"]) == {"cos=1", "cos=0.99", "cos=0.95", "cos=0.9", "cos=0.8"}
    assert set(hierarchy["top"]) == {"t=0", "t=0.1", "t=0.3", "t=0.5"}
    top = hierarchy["top"]["t=0"]["oracle"]
    assert top["byte_accuracy"] == pytest.approx(results["reconstruction"]["t=0"]["level1"]["byte_accuracy"])
    generation = results["generation"]
    assert generation["seeds"] == [0, 1] and len(generation["examples"]) == 4
    for side in ("samples", "real"):
        for key in ("judge_perplexity", "char_entropy", "word_entropy", "vocabulary_share", "vocabulary_share_long",
                    "long_word_share", "div", "mem", "word_length_mean", "sentence_length_mean"):
            assert math.isfinite(generation[side][key]["mean"]) and generation[side][key]["std"] >= 0.0, (side, key)
    baseline = results["baseline_generation"]
    assert len(baseline["examples"]) == 4 and math.isfinite(baseline["samples"]["judge_perplexity"]["mean"])
    # baseline samples have as many bytes as Zonkey's on average (an invalid byte run decodes to one character)
    length = round(generation["samples"]["mean_bytes"]["mean"])
    assert all(0 < len(e) <= length for e in baseline["examples"]), (length, baseline["examples"])
    # the real text comes from the training corpus here: all its words are in the training vocabulary except
    # where the cut to a sample's length splits the last word
    assert generation["real"]["vocabulary_share"]["mean"] > 0.8
    table = (out / "evaluation.md").read_text()
    assert "| 0 | word starts |" in table and "judge_perplexity" in table and "baseline samples |" in table
    assert "**Denoiser against noise level**" in table and "| 0.3 |" in table
    assert "**From level 1 down**" in table and "| handoff t" in table
    for picture in ("segmentation.png", "segmentation.html", "noise_curves.png"):
        assert (out / picture).stat().st_size > 1000
    assert (out / "segmentation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "border-left" in (out / "segmentation.html").read_text()
    assert script.main([str(tmp_path / "nothing")]) == 1
    assert "holds neither a saved model" in capsys.readouterr().err
    # a later evaluation reuses this baseline column (its weights not at hand): the same numbers, said so
    again = tmp_path / "again"
    code = script.main([str(model_dir), "--train_file", str(corpus), "--text_file", str(corpus),
                        "--max_documents", "6", "--noise_levels", "0", "--seeds", "0", "1", "--samples_per_seed", "2",
                        "--num_steps", "3", "--judge_model", str(judge_dir), "--output_dir", str(again),
                        "--baseline_results", str(out / "evaluation.json")])
    assert code == 0, capsys.readouterr().err
    reused = json.loads((again / "evaluation.json").read_text())["baseline_generation"]
    assert reused == dict(baseline, recorded_in=str(out / "evaluation.json"), recorded_with=str(model_dir),
                          sample_length=length)
    assert f"judged in an earlier evaluation (of {model_dir})" in (again / "evaluation.md").read_text()


def test_evaluate_script_reads_a_training_checkpoint_with_either_weights(micro_config, tmp_path, capsys):
    """evaluate.py on a step_N folder: its training weights by default, their EMA with --weights ema; the option is
    refused for a saved model."""
    from safetensors.torch import save_file

    from modeling_zonkey import ZonkeyModel
    from modeling_zonkey.training.checkpointing import EMA

    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "evaluate.py", "evaluate_script")
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(2.0)
    step = tmp_path / "run" / "step_2"
    step.mkdir(parents=True)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(step / "model.safetensors"))
    save_file(ema.state_dict(), str(step / "ema.safetensors"))
    (step / "training_state.json").write_text(json.dumps({"completed_steps": 2}))
    micro_config.to_json_file(step / "config.json")
    for weights, expected in ((None, model), ("ema", ema)):
        argv = [str(step)] + (["--weights", weights] if weights else [])
        loaded, tokenizer = script.load(script.parse_args(argv), step)
        params = dict(loaded.named_parameters())
        for i, name in enumerate(ema.names):
            value = getattr(expected, f"shadow_{i}") if weights else dict(model.named_parameters())[name]
            assert torch.equal(params[name], value), (weights, name)
        assert tokenizer.decode([104, 105]) == "hi"
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    assert script.main([str(saved), "--weights", "ema"]) == 1
    assert "apply to a training checkpoint" in capsys.readouterr().err


def test_pictures_without_matplotlib_say_what_to_install(monkeypatch):
    from modeling_zonkey.evaluation import pictures

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"pictures need matplotlib: pip install"):
        pictures.plot_training_curves({}, "unused.png")


def test_training_curves_come_from_the_tensorboard_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from modeling_zonkey.evaluation.pictures import plot_training_curves, read_scalars

    with pytest.raises(ValueError, match="--with_tracking"):
        read_scalars(tmp_path)
    writer = SummaryWriter(str(tmp_path / "zonkey"))
    for step in range(1, 41):
        writer.add_scalar("train/loss", 10.0 / step, step)
        if step % 10 == 0:
            writer.add_scalar("val/boundary_f1", step / 50, step)
    writer.close()
    scalars = read_scalars(tmp_path)
    steps, values = zip(*scalars["val/boundary_f1"])
    assert steps == (10, 20, 30, 40) and values == pytest.approx([0.2, 0.4, 0.6, 0.8])  # float32 in the log
    assert len(scalars["train/loss"]) == 40
    path = plot_training_curves(scalars, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_chance_boundaries_at_level_0_are_the_share_of_word_starts(make_model):
    """F1 inner's chance reference: at level 0 every byte but the first is a candidate, so chance precision is the
    share of those bytes that start a word."""
    from modeling_zonkey.evaluation.suite import segmentation_metrics

    documents = [b"The cat sat on the mat.", b"A dog ran to the fox and back again, 3 times."]
    metrics = segmentation_metrics(make_model(seed=2).eval(), documents)["level0"]
    share = sum(len(word_starts(d)) - 1 for d in documents) / sum(len(d) - 1 for d in documents)
    assert metrics["precision_inner_chance"] == pytest.approx(share)
    inner_predicted = metrics["segments"] - len(documents)
    expected_recall = inner_predicted * share / (metrics["reference_boundaries"] - len(documents))
    expected = 2 * share * expected_recall / (share + expected_recall)
    assert metrics["f1_inner_chance"] == pytest.approx(expected)
