#!/usr/bin/env python
"""The paper's check 2: does the Segment Splitter find boundaries without supervision? Synthetic text with
known boundaries: documents are random words of a small random lexicon (Zipf-distributed), joined by spaces
or by nothing at all. A one-level Zonkey trains on reconstruction alone (no boundary labels); its level-0
segment starts are scored against the true word starts (exact and +-1) on held-out documents, next to a
chance level (random boundaries at the model's own rate: precision = the gold boundary density).

    python examples/experiments/synthetic_boundaries.py [--steps 400]
"""

import argparse
import random

import torch
from common import level0_boundaries, one_level_config, train  # examples/experiments/common.py


def make_corpus(separator: str, count: int, length: int, seed: int, lexicon_size: int = 40):
    """Documents of whole words up to `length` bytes, and each document's gold word starts."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnop"
    lexicon_rng = random.Random(1234)  # the same lexicon for training and held-out documents
    lexicon = sorted({"".join(lexicon_rng.choice(letters) for _ in range(lexicon_rng.randint(2, 7)))
                      for _ in range(lexicon_size)})
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]
    documents, gold = [], []
    for _ in range(count):
        text, starts = "", []
        while True:
            word = rng.choices(lexicon, weights)[0]
            piece = (separator if text else "") + word
            if len(text) + len(piece) > length:
                break
            starts.append(len(text) + (len(separator) if text else 0))
            text += piece
        documents.append(text.encode())
        gold.append(starts)
    return documents, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| text | step | minutes | P | R | F1 | F1 +-1 | chance F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, separator in (("words + spaces", " "), ("words, no separator", "")):
        train_docs, _ = make_corpus(separator, 2000, 128, args.seed)
        held_docs, held_gold = make_corpus(separator, 64, 128, args.seed + 1)
        density = sum(len(g) for g in held_gold) / sum(len(d) for d in held_docs)

        def report(step, model, seconds):
            exact = level0_boundaries(model, held_docs, held_gold)
            near = level0_boundaries(model, held_docs, held_gold, tolerance=1)
            rate = exact.predicted / sum(len(d) for d in held_docs)  # chance: random starts at the model's rate
            chance = 2 * density * rate / (density + rate) if density + rate else 0.0
            print(f"| {name} | {step} | {seconds / 60:.1f} | {exact.precision:.3f} | {exact.recall:.3f} | "
                  f"{exact.f1:.3f} | {near.f1:.3f} | {chance:.3f} |", flush=True)

        train(one_level_config(width=32, window=10, document=128), train_docs, args.steps, lr=3e-3, seed=args.seed,
              every=args.every, callback=report)


if __name__ == "__main__":
    main()
