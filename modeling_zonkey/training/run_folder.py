"""A training run and its folder: who owns an --output_dir, which checkpoint a run resumes and with which arguments,
and the checkpoints it writes (used by examples/train_zonkey.py; the checkpoint files themselves are
checkpointing.py's).

A fresh run claims its folder (claim_output_dir) and writes a run id to run.json; every checkpoint carries the id,
the RunState and the run's RUN_ARGUMENTS, so `--resume_from_checkpoint latest` resumes only this run
(locate_resume, which also reads every part of the checkpoint first, and restore) and refuses other data-order or
schedule arguments (check_run_arguments). CheckpointWriter writes the checkpoints with the run's training time
(TrainingClock) and remembers the last one, which error messages name. A problem the user can fix is a TrainingError:
one `error:` line.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.logging import get_logger
from transformers import SchedulerType

from .agreement import PeerFailure, stop_together
from .checkpointing import (
    EMA_FILE,
    RUN_FILE,
    CheckpointError,
    changed_arguments,
    checkpoint_folders,
    find_checkpoint,
    foreign_checkpoints,
    pickled_files,
    prune_checkpoints,
    read_run_id,
    save_checkpoint,
    verify_checkpoint,
)

logger = get_logger(__name__)

LOG_FILE = "train_log.jsonl"


class TrainingError(Exception):
    """A problem the user can fix (missing / empty / non-text data, a bad config or checkpoint, a non-finite
    loss, a full disk): main() prints it as one `error: ...` line and exits with status 1, without a traceback.
    `synchronized` errors are raised by every process at once, so only the main process prints them. `together`
    (implied by `synchronized`): every process stops at this point, the others with PeerFailure
    (agreement.stop_together), so main() lets them all reach the exit before any leaves (a launcher stops the
    other processes as soon as one exits, maybe before they wrote their last line or deleted a partial file)."""

    def __init__(self, message: str, synchronized: bool = False, together: bool | None = None):
        super().__init__(message)
        self.synchronized = synchronized
        self.together = synchronized if together is None else together


@dataclass
class RunState:
    """Where a run stands: what a checkpoint's training_state.json records (with the run's id and arguments)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    train_bytes: int = 0
    train_seconds: float | None = 0.0  # training time before this process started (None: an old checkpoint's)


def open_train_log(output_dir: Path, resumed_steps: int | None) -> Path:
    """output_dir/train_log.jsonl, one JSON line per optimizer step. A fresh run starts it empty; a resumed run
    keeps the lines up to the checkpoint's step (dropping those of steps it will redo) and appends."""
    path = output_dir / LOG_FILE
    kept = []
    if resumed_steps is not None and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= resumed_steps:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                continue
    path.write_text("".join(kept))
    return path


# Arguments that fix a run's data order, schedule and noise: a resumed run must be given the same ones. The data files
# are compared by what they hold (document and byte counts, added by train()), not by path: moved data resumes.
RUN_ARGUMENTS = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
                 "num_warmup_steps", "weight_decay", "adam_epsilon", "max_grad_norm", "seed", "ema_decay",
                 "mixed_precision", "deterministic", "dataset_name", "dataset_config_name", "text_column",
                 "validation_split_percentage", "streaming", "streaming_validation_articles", "freeze_levels",
                 "unfreeze_at_step", "freeze_splitters")


def run_arguments(args, **measured) -> dict:
    """The RUN_ARGUMENTS of this run and `measured` values (processes, steps, data counts), as JSON."""
    values = {name: getattr(args, name) for name in RUN_ARGUMENTS}
    values["lr_scheduler_type"] = SchedulerType(args.lr_scheduler_type).value
    return {**values, **measured}


def claim_output_dir(args, accelerator) -> Path:
    """--output_dir, created and writable on every process. A folder that holds another run (checkpoints, a log) is
    refused unless --overwrite_output_dir (which deletes them) or the run is resumed."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"--output_dir {output_dir} is a file, not a folder: pick another --output_dir.",
                            synchronized=True)
    previous = checkpoint_folders(output_dir) if output_dir.is_dir() else []
    owned = [output_dir / name for name in (LOG_FILE, RUN_FILE) if (output_dir / name).is_file()]
    if not args.resume_from_checkpoint and (previous or owned):
        if not args.overwrite_output_dir:
            raise TrainingError(f"{output_dir} holds another run ({', '.join(p.name for p in previous or owned)}): "
                                "continue it with --resume_from_checkpoint latest, start afresh there with "
                                "--overwrite_output_dir (deletes its checkpoints and log), or pick a new --output_dir.",
                                synchronized=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in previous:
                shutil.rmtree(path)
            for path in owned:
                path.unlink()
            accelerator.print(f"--overwrite_output_dir: removed {len(previous)} checkpoint(s) of the previous run")
    accelerator.wait_for_everyone()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainingError(f"--output_dir {output_dir} cannot be written ({err.strerror or err}): pick a folder "
                            "this user can write to.", synchronized=True) from err
    accelerator.wait_for_everyone()
    return output_dir


@dataclass
class Resume:
    """The checkpoint a run resumes and what its training_state.json holds."""

    path: Path
    saved: dict  # the RunState's fields, the run's id and its arguments

    @property
    def run_args(self) -> dict:
        return self.saved.get("run_args", {})

    @property
    def run_id(self) -> str | None:
        return self.saved.get("run_id")

    def run_state(self) -> RunState:
        saved = self.saved
        return RunState(saved["completed_steps"], saved["epoch"], saved["batches_in_epoch"], saved["train_bytes"],
                        saved.get("train_seconds"))


def locate_resume(args, output_dir: Path, accelerator) -> Resume | None:
    """The checkpoint --resume_from_checkpoint names ("latest": of the run owning output_dir) and its training state,
    after every part of it was read (verify_checkpoint): a damaged file is named before anything is loaded."""
    if not args.resume_from_checkpoint:
        return None
    error = found = None
    try:
        run_id = read_run_id(output_dir)
        path = find_checkpoint(output_dir, args.resume_from_checkpoint, run_id)
        foreign = foreign_checkpoints(output_dir, run_id) if args.resume_from_checkpoint == "latest" else []
        if foreign:
            accelerator.print(f"warning: latest: skipped {', '.join(p.name for p in foreign)}, written by another run "
                              f"than the one owning {output_dir} ({RUN_FILE})")
        pickled = pickled_files(path)
        if pickled:
            raise CheckpointError(f"{path} holds pickled objects ({', '.join(pickled)}), which this script does not "
                                  "load (unpickling can run code). Checkpoints written before the EMA moved to "
                                  f"{EMA_FILE} kept it that way: remove the file(s) to resume (an EMA then restarts "
                                  "from the resumed weights).")
        found = Resume(path, verify_checkpoint(path, accelerator.process_index))
    except (FileNotFoundError, CheckpointError) as err:
        error = TrainingError(str(err), together=True)
    stop_together(accelerator, error, "to read the checkpoint to resume")
    return found


def check_run_arguments(args, path: Path, state: dict, current: dict, accelerator) -> None:
    """Refuse to resume with other data-order or schedule arguments than the checkpoint's, unless told to."""
    changed = changed_arguments(state.get("run_args", {}), current)
    if changed and not args.allow_changed_args:
        raise TrainingError(f"{path} was written with other arguments ({'; '.join(changed)}): resume with the "
                            "checkpoint's (they fix the data order and the schedule), or pass --allow_changed_args.",
                            synchronized=True)
    if changed:
        accelerator.print(f"warning: --allow_changed_args: resuming with {'; '.join(changed)}; the run is no longer "
                          "the uninterrupted one")


_CONFIG_NOT_COMPARED = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype"}


def config_changes(saved: dict, current: dict) -> list[str]:
    """`field: saved -> current` for every model-config field that differs, bookkeeping fields left out; a dict field
    (loss_weights) by its entries: `loss_weights.patch: 10.0 -> 5.0`."""
    def flat(config: dict) -> dict:
        return {f"{name}.{key}" if isinstance(value, dict) else name: item
                for name, value in config.items() if name not in _CONFIG_NOT_COMPARED
                for key, item in (value.items() if isinstance(value, dict) else [(None, value)])}

    saved, current = flat(saved), flat(current)
    return [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}" for name in sorted(set(saved) | set(current))
            if saved.get(name) != current.get(name)]


def warn_changed_config(path: Path, config, accelerator) -> list[str]:
    """Say which model-config fields (loss weights, schedules, ...) differ from the config the checkpoint was written
    with (its config.json; older checkpoints have none). A warning, not a refusal: a staged run changes them on
    purpose; the weights' shapes are checked when they load."""
    saved_file = path / "config.json"
    if not saved_file.is_file():
        return []
    saved = type(config).from_json_file(saved_file)
    changes = config_changes(json.loads(saved.to_json_string(use_diff=False)),
                             json.loads(config.to_json_string(use_diff=False)))
    if changes:
        accelerator.print(f"warning: {path} was written with another model config ({'; '.join(changes)}); training "
                          "goes on with this run's (--config_name / --model_name_or_path)")
    return changes


def restore(args, accelerator, model, ema, resume: Resume, this_run: dict) -> RunState:
    """Load a verified checkpoint into the prepared model, optimizer, scheduler and RNGs (and the EMA, which restarts
    from the resumed weights when the checkpoint has none); the RunState to continue from."""
    check_run_arguments(args, resume.path, resume.saved, this_run, accelerator)
    warn_changed_config(resume.path, accelerator.unwrap_model(model).config, accelerator)
    try:
        accelerator.load_state(str(resume.path))
    except RuntimeError as err:  # e.g. size mismatches: a checkpoint of another config
        lines = str(err).strip().splitlines()
        more = f" ... ({len(lines) - 3} more)" if len(lines) > 3 else ""
        detail = " ".join(line.strip() for line in lines[:3]) + more
        raise TrainingError(f"{resume.path} does not fit this model (written with another config?): {detail}") from err
    if ema is not None and not ema.load(resume.path):  # ema.safetensors was read by verify_checkpoint
        ema.restart(accelerator.unwrap_model(model))
        accelerator.print(f"warning: {resume.path} has no {EMA_FILE}; the EMA restarts from the resumed weights")
    state = resume.run_state()
    logger.info(f"resumed from {resume.path}: step {state.completed_steps}, epoch {state.epoch}, "
                f"{state.batches_in_epoch} batches into it")
    return state


def checkpoint_names(output_dir: Path) -> str:
    return ", ".join(path.name for path in checkpoint_folders(output_dir)) or "none"


@dataclass
class TrainingClock:
    """The run's training time: when this process started training, and the time before (None: unknown, a checkpoint
    of an older version did not record it)."""

    started: float
    seconds_before: float | None

    def train_seconds(self, now: float | None = None) -> float | None:
        """The whole run's training time until `now` (default: now); None when the time before is unknown."""
        now = time.time() if now is None else now
        return None if self.seconds_before is None else self.seconds_before + now - self.started


class CheckpointWriter:
    """Writes the run's checkpoints step_N / epoch_N (see modeling_zonkey/training/checkpointing.py) with the training
    time so far, the run's id and arguments and the EMA; keeps the newest --checkpoints_total_limit; remembers the last
    one written. A failed write is one error line."""

    def __init__(self, args, accelerator, output_dir: Path, run_id: str, this_run: dict, ema, clock: TrainingClock,
                 progress, model=None, tokenizer=None):
        """model: the unwrapped model and tokenizer, whose configs each checkpoint carries (see `describe`)."""
        self.args, self.accelerator, self.output_dir, self.run_id = args, accelerator, output_dir, run_id
        self.this_run, self.ema, self.clock, self.progress = this_run, ema, clock, progress
        self.model, self.tokenizer = model, tokenizer
        self.last: Path | None = None

    @property
    def last_name(self) -> str:
        """The last checkpoint this run wrote, for error messages."""
        return str(self.last) if self.last is not None else "none written by this run"

    def write(self, name: str, state: RunState) -> None:
        state.train_seconds = self.clock.train_seconds()
        self.last = self.save(name, state)
        limit = self.args.checkpoints_total_limit
        if limit and self.accelerator.is_main_process:
            for old in prune_checkpoints(self.output_dir, limit):
                logger.info(f"--checkpoints_total_limit {limit}: removed {old.name}")

    def save(self, name: str, state: RunState) -> Path:
        output_dir, ema = self.output_dir, self.ema
        try:
            return save_checkpoint(self.accelerator, output_dir, name,
                                   {**asdict(state), "run_id": self.run_id, "run_args": self.this_run},
                                   tensors={EMA_FILE: ema.state_dict()} if ema is not None else None,
                                   describe=self.describe)
        except PeerFailure:
            self.progress.close()
            raise
        except OSError as err:  # e.g. a full disk; the partial folder is gone, the complete ones are intact
            self.progress.close()
            raise TrainingError(f"cannot write the checkpoint {output_dir / name} ({err.strerror or err}): stopped. "
                                f"The earlier checkpoints are intact ({checkpoint_names(output_dir)}); free space, "
                                "then --resume_from_checkpoint latest.", together=True) from err

    def describe(self, folder: Path) -> None:
        """Make the checkpoint a model folder too: the model's config and generation config and the tokenizer next to
        accelerate's model.safetensors, so `from_pretrained(folder)` loads the training weights and
        checkpointing.checkpoint_model the EMA. The configs are written as JSON (their save_pretrained would copy the
        package's code files into every checkpoint); the tokenizer's save_pretrained adds its one code file."""
        if self.model is None:
            return
        self.model.config.to_json_file(folder / "config.json")
        if self.model.generation_config is not None:
            self.model.generation_config.to_json_file(folder / "generation_config.json")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
