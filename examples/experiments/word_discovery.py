"""When does the Segment Splitter find words, and what decides whether it does?

Trains a fresh model from a preset for a few hundred steps, once per seed, and every `--log_every` steps records on
a fixed set of held-out documents the level-0 boundary precision / recall / F1 against word starts (and the F1 that
counts a cut one byte off as a hit), the mean p_bos and the share of p_bos still soft (in (0.1, 0.9)), and on the
step's own batch the norm of the splitter's gradient from each group of loss terms (one backward pass per group on
the same batch and noise): the level-0 terms that reach the splitter through the reconstruction (existence,
ownership, density), its regularisers (patch, short-segment, compression), and the levels above. Arms differ by
config fields (`--set name=value`, JSON values) and by the splitter's learning-rate scale (`--splitter_lr_scale`,
with an optional `--splitter_lr_ramp` of steps over which it rises linearly to 1).

    python examples/experiments/word_discovery.py --seeds 0 1 2 3 --steps 150 --output runs/words-base.json
    python examples/experiments/word_discovery.py --seeds 0 1 2 3 --steps 150 --splitter_lr_scale 0.1 \\
        --output runs/words-slow-splitter.json

The optimizer, schedule and batches follow `examples/train_zonkey.py`'s defaults for the README command (AdamW,
cosine over `--planned_steps` with `--warmup_steps`, gradient clipping at 1, batches of 8 documents of the default
corpus shuffled with the seed).
"""

import argparse
import json
import math
from pathlib import Path

import torch
from common import default_corpus, optimizer_step, print_record, readme_optimizer, shuffled  # experiments/common.py
from transformers import set_seed

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.inspection import level_starts
from modeling_zonkey.evaluation.metrics import boundary_scores, word_starts
from modeling_zonkey.training.model_and_data import read_preset

REPO_ROOT = Path(__file__).resolve().parents[2]

# the terms through which the level-0 splitter learns, by group (weighted as in the model's loss)
REGULARIZERS = ("patch", "short_segment", "compression")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_name", default=str(REPO_ROOT / "configuration" / "zonkey-tiny.json"))
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="config fields to override, VALUE as JSON (e.g. density_offset=0.5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log_every", type=int, default=25)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--planned_steps", type=int, default=4000, help="the cosine schedule's length")
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--splitter_lr_scale", type=float, default=1.0,
                        help="the level-0 splitter's learning rate as a share of the others'")
    parser.add_argument("--splitter_lr_ramp", type=int, default=0,
                        help="steps over which that share rises linearly to 1 (0: it stays)")
    parser.add_argument("--zero_splitter_head", action="store_true",
                        help="start every splitter's head at zero (p_bos = 2/L at every position)")
    parser.add_argument("--init_from", nargs="*", default=[], metavar="MODULE=SEED",
                        help="start these submodules (e.g. levels.0.splitter, byte_embeddings) as a model built "
                             "with another seed would")
    parser.add_argument("--data_seed", type=int, help="shuffle the data with this seed (default: the run's seed)")
    parser.add_argument("--validation_documents", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the records here (JSON)")
    args = parser.parse_args(argv)
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item}: write NAME=VALUE (VALUE as JSON, e.g. density_offset=0.5).")
    for item in args.init_from:
        if "=" not in item or not item.rsplit("=", 1)[1].isdigit():
            parser.error(f"--init_from {item}: write MODULE=SEED (e.g. levels.0.splitter=0).")
    return args


def build_config(args):
    """The preset with the `--set` fields, validated as `ZonkeyConfig` validates its arguments."""
    config = read_preset(args.config_name)
    values = config.to_dict()
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(config, name):
            raise SystemExit(f"--set {name}: ZonkeyConfig has no field {name!r}.")
        values[name] = json.loads(value)
    try:
        return type(config)(**values)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from err


def validation_scores(model, batches) -> dict[str, float]:
    """Level-0 boundary P / R / F1 against word starts (and the F1 counting cuts one byte off), mean p_bos and the
    share of soft p_bos (in (0.1, 0.9)) on fixed held-out batches (eval mode)."""
    model.eval()
    predicted, gold, p_sum, soft, p_count = [], [], 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            out = model(batch["input_ids"], batch["attention_mask"])
            mask = batch["attention_mask"].bool()
            level0 = out.levels[0]
            p = level0.bos_probs[:, 1:][mask[:, 1:]]
            p_sum += float(p.sum())
            soft += int(((p > 0.1) & (p < 0.9)).sum())
            p_count += int(mask[:, 1:].sum())
            for row, (ids, row_mask) in enumerate(zip(batch["input_ids"], mask)):
                predicted.append(level_starts(out.levels, row)[0])
                gold.append(word_starts(bytes(ids[row_mask].tolist())))
    model.train()
    scores, near = boundary_scores(predicted, gold), boundary_scores(predicted, gold, tolerance=1)
    return {"precision": scores.precision, "recall": scores.recall, "f1": scores.f1, "f1_within_1": near.f1,
            "mean_p_bos": p_sum / max(p_count, 1), "soft_p_bos": soft / max(p_count, 1)}


def term_group(name: str) -> str:
    """"level1" for any term of a level above 0, "regularizers" for level 0's splitter priors, else
    "reconstruction" (level 0's decoder, stitcher and existence terms)."""
    level, term = name.split("/", 1)
    if level != "level0":
        return "level1+"
    return "regularizers" if term in REGULARIZERS else "reconstruction"


def splitter_gradient_norms(model, batch) -> dict[str, float]:
    """The norm of the level-0 splitter's gradient from each group of terms (`term_group`), on one batch with one
    draw of the training noise (replayed for every backward pass)."""
    splitter = list(model.levels[0].splitter.parameters())
    state = torch.random.get_rng_state()
    norms = {}
    for group in ("reconstruction", "regularizers", "level1+"):
        torch.random.set_rng_state(state)
        out = model(**batch, return_loss=True)
        weighted = [model.config.term_weight(int(name[5]), name.split("/", 1)[1]) * value
                    for name, value in out.loss_terms.items()
                    if name.startswith("level") and term_group(name) == group]
        if not weighted:
            continue
        grads = torch.autograd.grad(sum(weighted), splitter, allow_unused=True)
        norms[group] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
    torch.random.set_rng_state(state)
    return norms


def initial_model(args, config, seed: int) -> ZonkeyModel:
    """The model as `ZonkeyModel(config)` builds it after `set_seed(seed)`, with the `--init_from` submodules as a
    model built with their seeds has them and, with `--zero_splitter_head`, every splitter's head at zero. The
    global RNG is left as `set_seed(seed)` plus one model build leaves it (the training noise is the seed's)."""
    donors = {}
    for item in args.init_from:
        name, donor_seed = item.rsplit("=", 1)
        set_seed(int(donor_seed))
        donors[name] = ZonkeyModel(config).get_submodule(name).state_dict()
    set_seed(seed)
    model = ZonkeyModel(config)
    for name, state in donors.items():
        model.get_submodule(name).load_state_dict(state)
    if args.zero_splitter_head:
        for level in model.levels:
            torch.nn.init.zeros_(level.splitter.head.weight)
            torch.nn.init.zeros_(level.splitter.head.bias)
    return model


def run_seed(args, config, train_set, val_batches, seed: int) -> list[dict]:
    model = initial_model(args, config, seed)
    model.train()
    splitter = list(model.levels[0].splitter.parameters())
    others = [p for p in model.parameters() if all(p is not q for q in splitter)]
    optimizer, scheduler = readme_optimizer([{"params": others}, {"params": splitter}], args.learning_rate,
                                            args.warmup_steps, args.planned_steps)
    loader = shuffled(train_set, args.batch_size, seed if args.data_seed is None else args.data_seed)
    records, step = [], 0
    while step < args.steps:
        for batch in loader:
            if step % args.log_every == 0 or step == args.steps - 1:
                record = {"seed": seed, "step": step, **validation_scores(model, val_batches)}
                record.update({f"grad_{k}": v for k, v in splitter_gradient_norms(model, batch).items()})
                records.append(record)
                print_record(record)
            scale = args.splitter_lr_scale
            if args.splitter_lr_ramp:
                scale += (1.0 - scale) * min(1.0, step / args.splitter_lr_ramp)
            optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * scale
            optimizer_step(model, model(**batch, return_loss=True).loss, optimizer, scheduler)
            step += 1
            if step >= args.steps:
                break
    final = {"seed": seed, "step": step, **validation_scores(model, val_batches)}
    records.append(final)
    print_record(final)
    return records


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = build_config(args)
    train_set, val_batches = default_corpus(config.document_length[0], args.validation_documents)
    records = []
    for seed in args.seeds:
        records += run_seed(args, config, train_set, val_batches, seed)
    finals = [r for r in records if r["step"] == args.steps]
    found = sum(r["f1"] >= 0.6 for r in finals)
    print(f"\nseeds that found words (F1 >= 0.6 at step {args.steps}): {found} of {len(finals)}; F1 "
          + " ".join(f"{r['f1']:.3f}" for r in finals))
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))


if __name__ == "__main__":
    main()
