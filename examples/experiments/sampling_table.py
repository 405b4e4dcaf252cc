#!/usr/bin/env python
"""Samples from noise of saved Zonkeys under several samplers and step counts, judged side by side.

For every model folder, sampler and step count: the judge LM's perplexity of the samples, character entropy,
share of words in the training vocabulary and Div (the generation metrics of examples/evaluate.py, mean over
seeds), next to real held-out text cut to the same byte lengths. One table, one run, so the rows compare.

    python examples/experiments/sampling_table.py runs/zonkey-tiny runs/zonkey-tiny/step_5000 \
        --samplers ddmm ddim deterministic --num_steps 50
    python examples/experiments/sampling_table.py pretrained/zonkey-tiny-sentences --samplers ddmm \
        --options '{}' '{"clamp_min_existence": 0.5}' --max_new_tokens 200

--options: rows of other generation options (JSON objects, one row each); --max_new_tokens (old name
--max_new_bytes): samples of that many bytes (generate(max_new_tokens=...)) instead of one window. ms/byte is the
sampling's wall time per returned byte (the judge not included), so compare it within one run only.

--baselines: byte-level causal LMs (examples/train_baseline.py) sampled in the same table at each of --temperatures
(needs --max_new_tokens), to set a knob of Zonkey's sampler against a flat model's temperature (their real column:
the last Zonkey's documents, cut to the same lengths):

    python examples/experiments/sampling_table.py pretrained/zonkey-tiny-phrases --samplers ddmm \
        --options '{}' '{"clamp_noise_level": 0.2}' --max_new_tokens 300 --baselines runs/baseline --temperatures 1 0.8

A checkpoint folder step_N (written by --checkpointing_steps) gives its training weights, or with --weights ema the
EMA of them, so a run trained with --ema_decay can be compared with and without its EMA weights (its final folder
holds the EMA weights).
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

from modeling_zonkey import ZonkeyModel, ZonkeyTokenizer
from modeling_zonkey.evaluation.suite import (
    EvaluationSettings,
    baseline_sampler,
    check_baseline_length,
    generation_metrics,
    held_out_documents,
    load_judge,
    zonkey_sampler,
)
from modeling_zonkey.evaluation.text_statistics import training_ngrams, words
from modeling_zonkey.training.checkpointing import CHECKPOINT_WEIGHTS, is_checkpoint, model_or_checkpoint
from modeling_zonkey.training.data import load_text_datasets

# the samples' metrics and how each is printed; the real text's columns are the first five
FORMATS = {"judge_perplexity": "{:,.0f}", "char_entropy": "{:.2f}", "vocabulary_share": "{:.0%}",
           "vocabulary_share_long": "{:.0%}", "long_word_share": "{:.0%}", "div": "{:.2f}", "mean_bytes": "{:.1f}"}
COLUMNS = tuple(FORMATS)
REAL_COLUMNS = COLUMNS[:5]


def load(folder: str, weights: str = "model") -> ZonkeyModel:
    """A saved model, or a step_N checkpoint's training (`model`) or EMA (`ema`) weights."""
    try:
        return model_or_checkpoint(folder, weights if is_checkpoint(folder) else "model")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders or step_N checkpoint folders")
    parser.add_argument("--samplers", nargs="+", default=["ddmm", "ddim", "deterministic"])
    parser.add_argument("--num_steps", type=int, nargs="+", default=[50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples_per_seed", type=int, default=16)
    parser.add_argument("--options", nargs="+", default=["{}"], help="generation options, a JSON object per row")
    parser.add_argument("--max_new_tokens", "--max_new_bytes", type=int, default=None)
    parser.add_argument("--weights", choices=CHECKPOINT_WEIGHTS, default="model",
                        help="a checkpoint folder's training weights or their EMA (--ema_decay runs)")
    parser.add_argument("--baselines", nargs="*", default=[], help="byte-level causal LM folders sampled in the table")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="the baselines' temperatures")
    args = parser.parse_args()
    if args.baselines and args.max_new_tokens is None:
        parser.error("--baselines need --max_new_tokens (the baselines write samples of that many bytes).")
    if any(not t > 0 for t in args.temperatures):
        parser.error(f"--temperatures must be positive, got {args.temperatures}.")
    variants = [json.loads(text) for text in args.options]
    baselines = {}  # loaded and checked before any sampling, which takes minutes
    for folder in args.baselines:
        baselines[folder] = AutoModelForCausalLM.from_pretrained(folder).eval()
        try:
            check_baseline_length(baselines[folder], args.max_new_tokens)
        except ValueError as err:
            parser.error(f"{folder}: {err}")
    corpus = load_text_datasets()
    vocabulary = {w for text in corpus["train"]["text"] for w in words(text)}
    seen = training_ngrams(corpus["train"]["text"])
    judge, judge_tokenizer = load_judge()
    scoring = (judge, judge_tokenizer, vocabulary, seen)
    tokenizer = ZonkeyTokenizer()
    print("| model | sampler | steps | options | ms / byte | " + " | ".join(COLUMNS) + " | real: "
          + " | ".join(REAL_COLUMNS) + " | example |")
    print("|---|---|---:|---|---:|" + "---:|" * (len(COLUMNS) + len(REAL_COLUMNS)) + "---|")
    for folder in args.models:
        model = load(folder, args.weights)
        real = held_out_documents(corpus["validation"]["text"], model.config.document_length[0], 64)
        defaults = model.generation_config
        for sampler in args.samplers:
            for steps in args.num_steps:
                for options in variants:
                    model.generation_config = type(defaults)(**{**defaults.to_diff_dict(), "sampler": sampler,
                                                                "max_new_tokens": args.max_new_tokens, **options})
                    settings = EvaluationSettings(seeds=tuple(args.seeds), samples_per_seed=args.samples_per_seed,
                                                  num_steps=steps)
                    row = (folder, sampler, steps, json.dumps(options))
                    print_row(row, zonkey_sampler(model, tokenizer, settings), settings, real, scoring)
        model.generation_config = defaults
    for folder, baseline in baselines.items():  # against the real text of the last Zonkey's rows: one real column
        for temperature in args.temperatures:
            settings = EvaluationSettings(seeds=tuple(args.seeds), samples_per_seed=args.samples_per_seed)
            sample = baseline_sampler(baseline, args.samples_per_seed, args.max_new_tokens, temperature)
            print_row((folder, "ancestral", "", json.dumps({"temperature": temperature})), sample, settings, real,
                      scoring)


def print_row(row: tuple, sample, settings: EvaluationSettings, real: list[bytes], scoring: tuple) -> None:
    """One line of the table: the row's labels, then the metrics of sample(seed) over settings.seeds, against the
    real documents cut to the samples' lengths. scoring: the judge, its tokenizer, the training vocabulary and
    word 4-grams (generation_metrics)."""
    judge, judge_tokenizer, vocabulary, seen = scoring
    sample, clock = timed(sample)
    with torch.no_grad():
        result = generation_metrics(sample, judge, judge_tokenizer, real, vocabulary, seen, settings)
    cells = ([FORMATS[c].format(result["samples"][c]["mean"]) for c in COLUMNS]
             + [FORMATS[c].format(result["real"][c]["mean"]) for c in REAL_COLUMNS])
    speed = 1000 * clock["seconds"] / max(1, clock["bytes"])
    print(f"| {' | '.join(str(label) for label in row)} | {speed:.2f} | " + " | ".join(cells)
          + f" | `{result['examples'][0][:80]!r}` |", flush=True)


def timed(sample):
    """sample(seed) -> texts, wrapped to add up its wall time and the bytes it returned."""
    clock = {"seconds": 0.0, "bytes": 0}

    def run(seed: int) -> list[str]:
        start = time.perf_counter()
        texts = sample(seed)
        clock["seconds"] += time.perf_counter() - start
        clock["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
        return texts

    return run, clock


if __name__ == "__main__":
    main()
