"""Which loss terms pull the level-0 splitter toward more (or fewer) segment starts, and where.

For each checkpoint of a training run, on held-out documents in training mode (boundaries sampled, seeded), this
takes the gradient of every weighted level-0 loss term (and of each level above, as one) with respect to the level-0
splitter's logits and averages it over three kinds of position: word starts (a non-space byte after a space), inside
words (a non-space byte after a non-space byte) and spaces. A gradient step moves a logit by minus its gradient, so a
NEGATIVE mean says the term asks for MORE starts there (shorter segments), a positive mean for fewer. The table also
gives p_bos at each kind of position and the mean segment length (eval mode), so that a drift can be read against the
pulls that drive it.

    python examples/experiments/splitter_pull.py runs/zonkey --steps 1000 2000 3000

Output: one row per (checkpoint, term), the mean gradient x 1e6 per position kind (the mean over batches of each
batch's mean, +- its standard error over the batches), and a summary row per checkpoint.
"""

import argparse
import itertools
from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.suite import document_batches, held_out_documents
from modeling_zonkey.training.checkpointing import checkpoint_model
from modeling_zonkey.training.data import load_text_datasets

WHITESPACE = b" \t\n\r"
KINDS = ("word start", "inside word", "space")


def position_kinds(documents: list[bytes], length: int) -> torch.Tensor:
    """(B, N) long: 0 word start, 1 inside a word, 2 whitespace, -1 padding or the document's first byte."""
    kinds = torch.full((len(documents), length), -1, dtype=torch.long)
    for row, data in enumerate(documents):
        for i in range(1, len(data)):
            if data[i] in WHITESPACE:
                kinds[row, i] = 2
            else:
                kinds[row, i] = 0 if data[i - 1] in WHITESPACE else 1
    return kinds


def load_checkpoint(run: Path, step: int | None, config_name: Path | None = None) -> ZonkeyModel:
    """The run's model with the training weights of step_<step> (the final weights when step is None)."""
    if step is None:
        if config_name is None and not (run / "config.json").is_file():
            raise SystemExit(f"error: {run} has no config.json (a run still training writes its model at the end): "
                             "pass --steps, or give the run's preset as --config_name")
        model = ZonkeyModel(ZonkeyConfig.from_pretrained(config_name or run))
        model.load_state_dict(load_file(run / "model.safetensors"))
        return model
    folder = run / f"step_{step}"
    try:
        return checkpoint_model(folder, config=config_name)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def pulls(model: ZonkeyModel, documents: list[bytes], batch_size: int, seed: int) -> dict:
    """Mean gradient of each weighted level-0 term (and of each level above) w.r.t. the level-0 splitter logits, per
    position kind: the mean over batches of each batch's mean, with its standard error over the batches; p_bos per
    kind; mean eval-mode segment length. -> {"terms": {name: [3 floats]}, "stderr": {name: [3 floats]},
    "p": [3 floats], "bytes_per_segment": float}"""
    captured = {}
    handle = model.levels[0].splitter.head.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    per_batch, counts, p_sums = {}, torch.zeros(3), torch.zeros(3)
    torch.manual_seed(seed)
    model.train()
    try:
        for chunk, ids, mask in document_batches(documents, batch_size, torch.device("cpu")):
            out = model(input_ids=ids, attention_mask=mask, return_loss=True)
            logits = captured["logits"]
            kinds = position_kinds(chunk, ids.shape[1])
            masks = [kinds == k for k in range(3)]
            weighted_terms = {name: model.config.term_weight(0, name) * value for name, value in
                              ((k.split("/", 1)[1], v) for k, v in out.loss_terms.items() if k.startswith("level0/"))}
            weighted_terms.update({f"level {k[len('loss/level'):]} (all)": v for k, v in out.loss_terms.items()
                                   if k.startswith("loss/level") and k != "loss/level0"})
            batch_total = torch.zeros(3)
            for name, weighted in weighted_terms.items():
                if not weighted.requires_grad or weighted.detach() == 0:
                    continue
                (grad,) = torch.autograd.grad(weighted, logits, retain_graph=True, allow_unused=True)
                if grad is None:
                    continue
                grad = grad.squeeze(-1)
                means = torch.stack([grad[m].mean() if m.any() else torch.tensor(float("nan")) for m in masks])
                per_batch.setdefault(name, []).append(means)
                batch_total += means.nan_to_num(0.0)
            per_batch.setdefault("(all)", []).append(batch_total)
            probs = out.levels[0].bos_probs.detach()
            for k, m in enumerate(masks):
                counts[k] += m.sum()
                p_sums[k] += probs[m].sum()
        model.eval()
        starts = total = 0
        with torch.no_grad():
            for _, ids, mask in document_batches(documents, batch_size, torch.device("cpu")):
                boundaries = model(input_ids=ids, attention_mask=mask).levels[0].boundaries
                starts += int(boundaries.sum())
                total += int(mask.sum())
    finally:
        handle.remove()
    terms, stderr = {}, {}
    for name, rows in per_batch.items():
        values = torch.stack(rows)  # (batches, 3)
        terms[name] = values.nanmean(0).tolist()
        spread = (values - values.nanmean(0)).pow(2).nanmean(0) * len(rows) / max(len(rows) - 1, 1)
        stderr[name] = (spread.sqrt() / len(rows) ** 0.5).tolist()
    return {"terms": terms, "stderr": stderr, "p": (p_sums / counts.clamp_min(1)).tolist(),
            "bytes_per_segment": total / max(starts, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training run's output folder (config.json and step_* folders)")
    parser.add_argument("--steps", type=int, nargs="*", default=None,
                        help="checkpoint steps to read (default: the final weights in the run folder)")
    parser.add_argument("--documents", type=int, default=32, help="held-out documents (default 32)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config_name", type=Path, default=None,
                        help="the run's preset, for checkpoints that carry no config.json (written by older versions) "
                             "of a run still training")
    args = parser.parse_args()
    for step in args.steps or []:  # every folder named exists before anything is computed
        if not (args.run / f"step_{step}" / "model.safetensors").is_file():
            raise SystemExit(f"error: {args.run / f'step_{step}'} has no model.safetensors; list the run's step_* "
                             "folders and pick one")
    models = (load_checkpoint(args.run, step, args.config_name) for step in args.steps or [None])
    first = next(models)  # every checkpoint is read lazily; the first one's errors come before the corpus loads
    raw = load_text_datasets(None, None, None, None, "text", 0.05, 0)
    documents = held_out_documents(raw["validation"]["text"], first.config.document_length[0], args.documents)
    print(f"mean d(weighted term)/d(logit) x 1e6 per position, ± its standard error over batches of "
          f"{args.batch_size} (negative: asks for more starts); {len(documents)} held-out documents, seed {args.seed}")
    print(f"| step | term | {' | '.join(KINDS)} |\n|---:|---|---:|---:|---:|")
    for step, model in zip(args.steps or [None], itertools.chain([first], models)):
        result = pulls(model, documents, args.batch_size, args.seed)
        label = "final" if step is None else str(step)
        for name, values in sorted(result["terms"].items(), key=lambda item: item[0] == "(all)"):
            errors = result["stderr"][name]
            print(f"| {label} | {name} | " + " | ".join(f"{1e6 * v:+.1f} ± {1e6 * e:.1f}" for v, e in
                                                         zip(values, errors)) + " |")
        print(f"| {label} | p_bos; {result['bytes_per_segment']:.1f} bytes/segment | "
              + " | ".join(f"{v:.3f}" for v in result["p"]) + " |", flush=True)


if __name__ == "__main__":
    main()
