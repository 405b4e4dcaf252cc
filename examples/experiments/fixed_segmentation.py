"""Does Zonkey's objective prefer words? Level 0 trained on a fixed segmentation, one arm per segmentation.

The paper's argument for unsupervised words is that crisp, meaningful splits minimise the downstream losses. This
measures it directly: the level-0 splitter is replaced by fixed cuts (p_bos = 1 at the cuts, 0 elsewhere, plus the
forced cuts that keep gaps within the window), and the compressor and decoder train from scratch on them, with the
same seed, data order, optimizer and schedule in every arm; level 1 is frozen. Arms:

    words      every word start (a non-space byte after a space; what the boundary F1 scores against)
    shifted    every word start moved 2 bytes right: the same segment lengths, misaligned with the words
    random     as many cuts per document as it has words, at random positions
    PATH       the cuts of a trained model's splitter (eval mode), e.g. a run that did not find words

At the end (and every `--eval_every` steps) each arm reports, on held-out documents cut its own way, the level-0
reconstruction loss (byte cross-entropy in nats, ownership-weighted, at the clean pass's small t, without the
density factor that scales it in training) and the share of bytes given back from level 0 at t = 0.

    python examples/experiments/fixed_segmentation.py --arms words shifted random runs/r25s1-a --steps 300
"""

import argparse
import json
from pathlib import Path

import torch
from common import default_corpus, optimizer_step, print_record, readme_optimizer, shuffled  # experiments/common.py
from torch import nn
from transformers import set_seed

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.inspection import level_starts
from modeling_zonkey.evaluation.metrics import byte_accuracy, word_starts
from modeling_zonkey.segment_splitter import (
    LOG_CERTAIN_BOS,
    SplitterOutput,
    density_factor,
    force_boundaries,
    mean_bos_probability,
)
from modeling_zonkey.training.model_and_data import read_preset

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIFT = 2


class FixedSplitter(nn.Module):
    """Stands in for a level's SegmentSplitter: the cuts of `self.cuts` (B, N) bool, set before each forward."""

    def __init__(self, window_length: int):
        super().__init__()
        self.window_length = window_length
        self.cuts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, valid: torch.Tensor, threshold: float | None = None) -> SplitterOutput:
        cuts = force_boundaries(self.cuts.clone(), valid, self.window_length)
        p = cuts.to(x.dtype) * valid
        log_not = torch.where(cuts, torch.full_like(p, LOG_CERTAIN_BOS), torch.zeros_like(p)) * valid
        return SplitterOutput(p, log_not, cuts)


def arm_cuts(arm: str, batch: dict, generator: torch.Generator, reference: ZonkeyModel | None) -> torch.Tensor:
    """(B, N) bool cuts of one arm for a batch (position 0 always cut)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    cuts = torch.zeros_like(mask)
    if reference is not None:
        with torch.no_grad():
            levels = reference(ids, batch["attention_mask"]).levels
    for row in range(len(ids)):
        length = int(mask[row].sum())
        words = word_starts(bytes(ids[row][mask[row]].tolist()))
        if arm == "words":
            starts = words
        elif arm == "shifted":
            starts = [0] + [s + SHIFT for s in words[1:] if s + SHIFT < length]
        elif arm == "random":
            starts = [0] + (torch.randperm(max(length - 1, 0), generator=generator)[: len(words) - 1] + 1).tolist()
        else:
            starts = level_starts(levels, row)[0]
        cuts[row, starts] = True
    return cuts & mask


def validation(model, batches, cuts) -> dict[str, float]:
    """Level-0 reconstruction loss (nats / byte) and bytes back from level 0 at t = 0, on fixed held-out batches."""
    model.eval()
    splitter = model.levels[0].splitter
    loss = right = total = 0.0
    with torch.no_grad():
        for batch, batch_cuts in zip(batches, cuts):
            splitter.cuts = batch_cuts
            out = model(**batch, return_loss=True)
            level0 = out.levels[0]
            density = density_factor(mean_bos_probability(level0.bos_probs, level0.valid), splitter.window_length,
                                     model.config.density_offset)
            loss += float(out.loss_terms["level0/reconstruction"] / density)  # the term is scaled by the density
            rows = model.reconstruct(**batch, from_level=0)
            c, t = byte_accuracy(rows, batch["input_ids"], batch["attention_mask"])
            right, total = right + c, total + t
    model.train()
    return {"reconstruction_loss": loss / len(batches), "bytes_back": right / max(total, 1)}


def run_arm(args, config, train_set, val_batches, arm: str) -> list[dict]:
    reference = None
    if arm not in ("words", "shifted", "random"):
        reference = ZonkeyModel.from_pretrained(arm).eval()
    set_seed(args.seed)
    model = ZonkeyModel(config)
    model.levels[0].splitter = FixedSplitter(config.window_length[0])
    model.freeze_levels([1])
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    val_cuts = [arm_cuts(arm, batch, generator, reference) for batch in val_batches]
    optimizer, scheduler = readme_optimizer([p for p in model.parameters() if p.requires_grad], args.learning_rate,
                                            args.warmup_steps, args.planned_steps)
    loader = shuffled(train_set, args.batch_size, args.seed)
    records, step = [], 0
    while step < args.steps:
        for batch in loader:
            model.levels[0].splitter.cuts = arm_cuts(arm, batch, generator, reference)
            optimizer_step(model, model(**batch, return_loss=True).loss, optimizer, scheduler)
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                segments = sum(int(c.sum()) for c in val_cuts) / sum(len(b["input_ids"]) for b in val_batches)
                record = {"arm": arm, "step": step, "cuts_per_document": segments,
                          **validation(model, val_batches, val_cuts)}
                records.append(record)
                print_record(record)
            if step >= args.steps:
                break
    return records


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_name", default=str(REPO_ROOT / "configuration" / "zonkey-tiny.json"))
    parser.add_argument("--arms", nargs="+", default=["words", "shifted", "random"],
                        help="words, shifted, random, or the folder of a trained model whose splitter cuts")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--planned_steps", type=int, default=4000, help="the cosine schedule's length")
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--validation_documents", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the records here (JSON)")
    args = parser.parse_args(argv)
    for arm in args.arms:
        if arm not in ("words", "shifted", "random") and not (Path(arm) / "config.json").is_file():
            parser.error(f"--arms {arm}: not words, shifted or random, nor a saved model folder (no config.json).")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = read_preset(args.config_name)
    train_set, val_batches = default_corpus(config.document_length[0], args.validation_documents)
    records = []
    for arm in args.arms:
        records += run_arm(args, config, train_set, val_batches, arm)
    print("\n| arm | cuts / document | reconstruction loss (nats / byte) | bytes back from level 0 |")
    print("|---|---:|---:|---:|")
    for record in records:
        if record["step"] == args.steps:
            print(f"| {record['arm']} | {record['cuts_per_document']:.1f} | {record['reconstruction_loss']:.3f} | "
                  f"{record['bytes_back']:.1%} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))


if __name__ == "__main__":
    main()
