"""The training script's argument checks: each bad combination or value of examples/train_zonkey.py's arguments
in words that say what to give instead (argparse prints them as usage errors), and which argument values its
train_results.json records."""

import math

from .threads import fixed_threads


def argument_error(args) -> str | None:
    """The first thing wrong with the parsed arguments, or None."""
    if args.config_name is None and args.model_name_or_path is None:
        return ("give --config_name (train from scratch), --model_name_or_path (fine-tune), or both (fine-tune the "
                "folder's weights under the preset's config, e.g. a longer level-1 window)")
    if args.checkpointing_steps not in (None, "epoch") and not (
            str(args.checkpointing_steps).isdigit() and int(args.checkpointing_steps) > 0):
        return '--checkpointing_steps must be a positive integer or "epoch"'
    if args.streaming and not (args.dataset_name and args.max_train_steps):
        return ("--streaming reads a --dataset_name (a Hub id or a local dataset folder) and needs --max_train_steps "
                "(a stream has no length to count epochs by)")
    if args.streaming_validation_articles < 0:
        return "--streaming_validation_articles must be >= 0"
    if args.push_to_hub and not args.hub_model_id:
        return "--push_to_hub needs --hub_model_id (org/name)"
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "eval_steps", "logging_steps", "ddp_timeout"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1"
    for name in ("max_train_steps", "stop_after_steps", "checkpoints_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name} must be >= 1"
    try:
        fixed_threads(args.threads)
    except ValueError as err:
        return str(err)
    if args.unfreeze_at_step is not None and (not args.freeze_levels or args.unfreeze_at_step < 1):
        return ("--unfreeze_at_step N (N >= 1) ends a freeze: give it with --freeze_levels (e.g. --freeze_levels 1 "
                f"--unfreeze_at_step 1400), got --unfreeze_at_step {args.unfreeze_at_step}")
    for name in ("learning_rate", "adam_epsilon", "weight_decay", "max_grad_norm", "max_train_minutes",
                 "validation_split_percentage", "ema_decay"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            return f"--{name} must be a finite number, got {value}"
    for name in ("learning_rate", "adam_epsilon", "max_train_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            return f"--{name} must be > 0, got {getattr(args, name)}"
    for name in ("weight_decay", "max_grad_norm", "num_warmup_steps", "eval_batches"):
        if getattr(args, name) < 0:
            return f"--{name} must be >= 0, got {getattr(args, name)}"
    if args.ema_decay is not None and not 0.0 < args.ema_decay < 1.0:
        return f"--ema_decay must be in (0, 1), e.g. 0.999; got {args.ema_decay}"
    if not 0.0 <= args.validation_split_percentage < 100.0:
        return f"--validation_split_percentage must be in [0, 100), got {args.validation_split_percentage}"
    if not 0 <= args.seed < 2**32:  # numpy's seed range (accelerate's set_seed seeds numpy too)
        return f"--seed must be in [0, 2**32 - 1], got {args.seed}"
    return None


def json_value(value) -> bool:
    """A number, string, bool, None, or a list of them (--freeze_levels 1): what train_results.json records."""
    scalar = (int, float, str, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))
