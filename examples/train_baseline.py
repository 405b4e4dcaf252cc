#!/usr/bin/env python
"""Train the flat baseline: a byte-level GPT-2 (modeling_zonkey/evaluation/baseline.py) of the same size as a Zonkey
preset, on the same documents (same corpus, split and document length), with the same optimiser, schedule and
wall-clock budget conventions as examples/train_zonkey.py, under Accelerate.

    python examples/train_baseline.py --zonkey_config configuration/zonkey-tiny.json --output_dir runs/baseline-tiny \\
        --max_train_steps 1000 --max_train_minutes 10 --learning_rate 2e-3

Reports validation bits per byte (the mean next-byte negative log-likelihood in bits over the validation
documents: bytes, not characters, so UTF-8 text outside ASCII counts per byte), training bytes/s and peak
memory in train_results.json, and saves the model with save_pretrained. Its samples are judged by
`examples/evaluate.py ZONKEY_FOLDER --baseline_model runs/baseline-tiny`.
`--checkpointing_steps N` writes the training state (weights, optimiser, schedule, data position, random states)
to OUTPUT_DIR/step_N, and `--resume_from_checkpoint latest` (or a step_N folder) goes on from there with the
same schedule, so a long baseline can be trained across sessions; `--max_train_minutes` then counts the minutes of
every session (up to the checkpoint each resumed from).
`--model_name_or_path` continues a baseline saved by this script with a fresh optimiser and schedule (a staged
run, as Zonkey checkpoints continue each other); train_results.json adds up the minutes and steps of every stage.
"""

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.baseline import baseline_training, char_baseline
from modeling_zonkey.training.checkpointing import (
    changed_arguments,
    find_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from modeling_zonkey.training.data import ZonkeyDataCollator, build_level0_documents, load_text_datasets


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zonkey_config", default="configuration/zonkey-tiny.json",
                        help="the Zonkey preset whose parameter count and document length the baseline matches")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model_name_or_path", default=None,
                        help="a baseline folder written by this script to continue (default: a fresh one)")
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--train_file", default=None)
    parser.add_argument("--validation_file", default=None)
    parser.add_argument("--validation_split_percentage", type=float, default=5.0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--lr_scheduler_type", default="cosine")
    parser.add_argument("--num_warmup_steps", type=int, default=30)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--max_train_minutes", type=float, default=None)
    parser.add_argument("--eval_steps", type=int, default=100)
    parser.add_argument("--eval_batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=None,
                        help="save the training state to OUTPUT_DIR/step_N every N optimizer steps")
    parser.add_argument("--resume_from_checkpoint", default=None,
                        help='a step_N folder written by --checkpointing_steps, or "latest" (the newest in OUTPUT_DIR)')
    args = parser.parse_args(argv)
    if args.checkpointing_steps is not None and args.checkpointing_steps < 1:
        parser.error(f"--checkpointing_steps must be a positive number of steps, got {args.checkpointing_steps}")
    return args


# The arguments a resumed run must share with the run that wrote the checkpoint (else its schedule or data order
# would silently differ).
_SAME_ON_RESUME = ("zonkey_config", "model_name_or_path", "dataset_name", "train_file", "validation_file",
                   "validation_split_percentage", "per_device_train_batch_size", "learning_rate", "weight_decay",
                   "lr_scheduler_type", "num_warmup_steps", "max_train_steps", "seed")


def resumed_state(args, accelerator) -> dict:
    """--resume_from_checkpoint: load the checkpoint into the prepared objects; return its training state
    (completed_steps, epoch, batches_in_epoch, train_bytes, minutes, curve). A checkpoint of a run with other
    schedule or data arguments is a ValueError naming them."""
    folder = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    state = verify_checkpoint(folder, accelerator.process_index)
    saved = state.get("args") or {}
    changed = changed_arguments({name: saved[name] for name in _SAME_ON_RESUME if name in saved},
                                {name: getattr(args, name) for name in _SAME_ON_RESUME})
    if changed:
        raise ValueError(f"--resume_from_checkpoint {folder}: written by a run with other arguments (there -> here: "
                         f"{', '.join('--' + change for change in changed)}); resume with the arguments of the run "
                         "that wrote it.")
    accelerator.load_state(str(folder))
    accelerator.print(f"resumed from {folder}: step {state['completed_steps']}, "
                      f"{state['minutes']:.1f} minutes trained")
    return state


def continued_baseline(folder: Path, document_length: int):
    """The saved baseline in `folder` and the training it already had: {"minutes", "steps"} (its stages added up)."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ValueError(f"--model_name_or_path {folder}: no saved baseline there (config.json missing); give a "
                         "folder written by examples/train_baseline.py.")
    model = AutoModelForCausalLM.from_pretrained(folder)
    if model.config.n_positions < document_length:
        raise ValueError(f"--model_name_or_path {folder}: it reads {model.config.n_positions} bytes, the preset's "
                         f"documents have {document_length}; continue it with the preset it was trained for.")
    earlier = baseline_training(folder) or {}
    return model, {"minutes": float(earlier.get("minutes") or 0.0), "steps": int(earlier.get("steps") or 0)}


def next_byte_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of next-byte NLL (nats) over real bytes after the first, and their count."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                             reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def bits_per_byte(model, loader, accelerator, max_batches: int) -> float:
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for index, batch in enumerate(loader):
        if index >= max_batches:
            break
        loss, count = next_byte_loss(model, batch)
        total += torch.tensor([loss.item(), count], dtype=torch.float64, device=accelerator.device)
    model.train()
    loss, count = accelerator.reduce(total, reduction="sum").tolist()
    return loss / max(count, 1) / math.log(2)


def train(args) -> dict:
    # the seedable sampler: each epoch's order depends on the seed and the epoch only, so a resumed run reads the
    # documents in the order the uninterrupted run would
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(args.seed)
    config = ZonkeyConfig.from_pretrained(args.zonkey_config)
    with torch.device("meta"):
        zonkey_parameters = sum(p.numel() for p in ZonkeyModel(config).parameters())
    length = config.document_length[0]
    model, earlier = char_baseline(zonkey_parameters, context=length), {"minutes": 0.0, "steps": 0}
    if args.model_name_or_path:
        model, earlier = continued_baseline(Path(args.model_name_or_path), length)
    num_parameters = sum(p.numel() for p in model.parameters())
    raw = load_text_datasets(args.dataset_name, None, args.train_file, args.validation_file, "text",
                             args.validation_split_percentage / 100.0, args.seed)
    documents, stats = build_level0_documents(raw, length)
    accelerator.print(f"{stats['train'].describe()}\n{stats['validation'].describe()}")
    collator = ZonkeyDataCollator()
    train_loader = DataLoader(documents["train"].remove_columns(["article"]),
                              batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collator,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(documents["validation"].remove_columns(["article"]),
                            batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, eps=1e-7, weight_decay=args.weight_decay)
    # the prepared scheduler steps once per process at every optimizer step (as in train_zonkey.py)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    accelerator.print(f"baseline: byte-level GPT-2, {model.config.n_layer} layers x {model.config.n_embd}, "
                      f"{num_parameters:,} parameters (Zonkey preset: {zonkey_parameters:,})")
    state = {"completed_steps": 0, "epoch": 0, "batches_in_epoch": 0, "train_bytes": 0, "minutes": 0.0, "curve": []}
    if args.resume_from_checkpoint:
        state = resumed_state(args, accelerator)
    started, minutes_before = time.time(), state["minutes"]
    step, train_bytes, curve = state["completed_steps"], state["train_bytes"], [tuple(p) for p in state["curve"]]
    progress = tqdm(total=args.max_train_steps, initial=step, disable=not accelerator.is_local_main_process)
    model.train()
    epoch, skip, stop = state["epoch"], state["batches_in_epoch"], step >= args.max_train_steps
    while not stop:
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        batches = skip
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            batches += 1
            loss, count = next_byte_loss(model, batch)
            accelerator.backward(loss / max(count, 1))
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            train_bytes += int(batch["attention_mask"].sum())
            progress.update(1)
            progress.set_postfix(bits_per_byte=f"{loss.item() / max(count, 1) / math.log(2):.3f}")
            minutes = minutes_before + (time.time() - started) / 60
            late = args.max_train_minutes is not None and minutes > args.max_train_minutes
            # every process stops at the same step: any process out of time stops them all
            out_of_time = bool(accelerator.gather(torch.tensor([late], device=accelerator.device)).any())
            if step % args.eval_steps == 0 or step == args.max_train_steps or out_of_time:
                curve.append((step, bits_per_byte(model, val_loader, accelerator, args.eval_batches)))
                accelerator.print(f"step {step}: validation bits/byte {curve[-1][1]:.4f}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, f"step_{step}", {
                    "completed_steps": step, "epoch": epoch, "batches_in_epoch": batches, "train_bytes": train_bytes,
                    "minutes": minutes, "curve": curve, "args": vars(args)})
            stop = step >= args.max_train_steps or out_of_time
            if stop:
                break
        if batches == 0:
            raise ValueError("the training split gave no batch: give more training text.")
        epoch, skip = epoch + 1, 0
    progress.close()
    minutes = minutes_before + (time.time() - started) / 60
    results = {"completed_steps": step, "train_bytes": train_bytes, "train_minutes": minutes,
               "total_train_minutes": earlier["minutes"] + minutes, "total_completed_steps": earlier["steps"] + step,
               "continued_from": args.model_name_or_path,
               "train_bytes_per_second": train_bytes / max(minutes * 60, 1e-9), "num_parameters": num_parameters,
               "zonkey_parameters": zonkey_parameters, "validation_bits_per_byte": curve[-1][1] if curve else None,
               "curve": curve, "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "args": vars(args)}
    output = Path(args.output_dir)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(output)
        (output / "train_results.json").write_text(json.dumps(results, indent=2))
    accelerator.print(f"saved to {output}: validation bits/byte {results['validation_bits_per_byte']:.4f}, "
                      f"{results['train_bytes_per_second']:,.0f} training bytes/s")
    return results


def main(argv=None) -> int:
    try:
        train(parse_args(argv))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
