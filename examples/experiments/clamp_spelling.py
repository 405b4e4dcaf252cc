#!/usr/bin/env python
"""What level 0 spells from level 1's word latents at every step of sampling from noise, and how sure it is.

Clamping (docs/generation.md) hands every word latent that level 1's decoder estimates to level 0, which spells it
(the nearest byte of each kept position) before the bytes are compressed again. This samples one top-level window
per sample from noise with the folder's generation config (options may override it) and records, at every step,
each kept estimate's spelling and level 0's confidence in it (`spell`: the mean over its bytes of the decoder's max byte
probability). Printed per step: the real-word share of the spelled short (< 5 characters) and long words, and the
mean confidence of the short words, of the long real ones and of the long non-words; then the final samples'
real-word shares. A two-level model (level 1 on top).

`--confidence_gate G` clamps only the estimates that level 0 spells with confidence >= G and leaves the others as
level 1 wrote them (G = 0: the folder's clamping; G above 1: none clamped, as `clamp=False`).

    python examples/experiments/clamp_spelling.py pretrained/zonkey-tiny-phrases --samples 64
    python examples/experiments/clamp_spelling.py pretrained/zonkey-tiny-phrases --confidence_gate 0.8
"""

import argparse
import json
from collections import defaultdict

import torch

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.diagnostics import spell
from modeling_zonkey.evaluation.text_statistics import LONG_WORD, diversity, long_word_share, vocabulary_share, words
from modeling_zonkey.sampling import kept_length
from modeling_zonkey.training.data import load_text_datasets
from modeling_zonkey.windows import Observers, TopWindows


def recording_windows(model, config, gate: float, records: dict) -> TopWindows:
    """generate()'s window sampler whose clamp first records, into records[t], (bytes, confidence) for every estimate
    level 0 spells in the step's windows (the positions a window keeps: up to where its existence first falls to the
    threshold), and clamps only the estimates spelled with confidence >= gate."""
    windows = TopWindows(model, config, Observers())

    def clamp_at(level: int):
        def clamp(sequence: torch.Tensor, existence: torch.Tensor, t: float) -> torch.Tensor:
            spelled = spell(model, sequence.flatten(0, 1), config.clamp_noise_level)
            kept = kept_length(existence, config.existence_threshold)  # the positions the window would keep
            in_window = (torch.arange(sequence.shape[1], device=kept.device) < kept[:, None]).flatten().tolist()
            records[t].append([item for item, keep in zip(spelled, in_window) if keep])
            if not config.clamp or t > config.clamp_max_t:
                return sequence
            confidence = torch.tensor([c for _, c in spelled], device=sequence.device).view(sequence.shape[:2])
            chosen = confidence >= gate
            if config.clamp_min_existence > 0:
                chosen &= existence > config.clamp_min_existence
            return model.clamp_to_data(sequence, level, chosen, config.clamp_noise_level)

        return clamp

    windows.clamp = clamp_at
    return windows


def mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def spelling_rows(records: dict, vocabulary: set[str]) -> list[dict]:
    """One row per step (t falling): words spelled, real shares of short and long words, mean confidences."""
    rows = []
    for t in sorted(records, reverse=True):
        short, long_real, long_other = [], [], []
        for spelled in records[t]:
            for text, confidence in spelled:
                for word in words(text.decode("utf-8", "replace")):
                    if len(word) < LONG_WORD:
                        short.append((word in vocabulary, confidence))
                    else:
                        (long_real if word in vocabulary else long_other).append(confidence)
        long_count = len(long_real) + len(long_other)
        rows.append({"t": t, "words": len(short) + long_count,
                     "real_short": mean([real for real, _ in short]),
                     "real_long": len(long_real) / long_count if long_count else float("nan"),
                     "long_share": long_count / max(len(short) + long_count, 1),
                     "confidence_short": mean([c for _, c in short]), "confidence_long_real": mean(long_real),
                     "confidence_long_other": mean(long_other)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved two-level Zonkey folder")
    parser.add_argument("--samples", type=int, default=64, help="windows sampled from noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confidence_gate", type=float, default=0.0)
    parser.add_argument("--options", default="{}", help="generation options as JSON, e.g. '{\"num_steps\": 10}'")
    parser.add_argument("--every", type=int, default=5, help="print every n-th step (the last one always)")
    parser.add_argument("--output", help="also write the rows and the final shares here (JSON)")
    args = parser.parse_args(argv)
    model = ZonkeyModel.from_pretrained(args.model).eval()
    if model.config.num_levels != 2:
        parser.error(f"{args.model} has {model.config.num_levels} levels; the check reads level 1's word latents "
                     "on top of level 0 (a two-level model).")
    try:
        config = model._prepare_generation_config(None, **{**json.loads(args.options), "seed": args.seed})
        config.validate()
    except ValueError as err:
        parser.error(f"--options: {err}")
    corpus = load_text_datasets()
    vocabulary = {w for text in corpus["train"]["text"] for w in words(text)}
    records = defaultdict(list)
    with torch.no_grad():
        ids, _, _ = recording_windows(model, config, args.confidence_gate, records).from_noise(args.samples)
    rows = spelling_rows(records, vocabulary)
    print("| step | t | words | real short | real long | long | confidence: short | long real | long non-word |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step, row in enumerate(rows, 1):
        if step % args.every == 1 or args.every == 1 or step == len(rows):
            print(f"| {step} | {row['t']:.2f} | {row['words']} | {row['real_short']:.0%} | {row['real_long']:.0%} | "
                  f"{row['long_share']:.0%} | {row['confidence_short']:.3f} | {row['confidence_long_real']:.3f} | "
                  f"{row['confidence_long_other']:.3f} |")
    texts = [bytes(sample.tolist()).decode("utf-8", "replace") for sample in ids]
    final = {"real_words": vocabulary_share(texts, vocabulary),
             "real_long": vocabulary_share(texts, vocabulary, LONG_WORD), "long_word_share": long_word_share(texts),
             "div": diversity(texts)}
    print(f"\nsamples ({len(texts)} windows, gate {args.confidence_gate:g}): real words {final['real_words']:.1%}, "
          f"real among long words {final['real_long']:.1%}, long words {final['long_word_share']:.1%}, "
          f"Div {final['div']:.3f}; {texts[0][:80]!r}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "steps": rows, "samples": final, "texts": texts}, f, indent=1)


if __name__ == "__main__":
    main()
