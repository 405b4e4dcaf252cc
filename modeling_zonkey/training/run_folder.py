"""A training run and its folder: who owns an --output_dir, which checkpoint a run resumes and with which arguments,
and what a checkpoint records (used by examples/train_zonkey.py; the checkpoint files themselves are
checkpointing.py's).

A fresh run claims its folder (claim_output_dir) and writes a run id to run.json; every checkpoint carries the id,
the RunState and the run's RUN_ARGUMENTS, so `--resume_from_checkpoint latest` resumes only this run
(locate_resume, which also reads every part of the checkpoint first) and refuses other data-order or schedule
arguments (check_run_arguments). A problem the user can fix is a TrainingError: one `error:` line.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

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
    read_run_id,
    save_checkpoint,
    verify_checkpoint,
)

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
                 "validation_split_percentage", "streaming", "streaming_validation_articles", "freeze_levels")


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


def locate_resume(args, output_dir: Path, accelerator) -> tuple[Path, dict] | None:
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
        found = path, verify_checkpoint(path, accelerator.process_index)
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


def checkpoint_names(output_dir: Path) -> str:
    return ", ".join(path.name for path in checkpoint_folders(output_dir)) or "none"


@dataclass
class RunState:
    """Where a run stands: what a checkpoint's training_state.json records (with the run's id and arguments)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    train_bytes: int = 0
    train_seconds: float | None = 0.0  # training time before this process started (None: an old checkpoint's)


def save_run_state(accelerator, output_dir: Path, name: str, state: RunState, run_id: str, this_run: dict, ema,
                   progress) -> Path:
    """A checkpoint of the run (see modeling_zonkey/training/checkpointing.py); a failed write is one error line."""
    try:
        return save_checkpoint(accelerator, output_dir, name, {**asdict(state), "run_id": run_id, "run_args": this_run},
                               tensors={EMA_FILE: ema.state_dict()} if ema is not None else None)
    except PeerFailure:
        progress.close()
        raise
    except OSError as err:  # e.g. a full disk; the partial folder is gone, the complete ones are intact
        progress.close()
        raise TrainingError(f"cannot write the checkpoint {output_dir / name} ({err.strerror or err}): stopped. "
                            f"The earlier checkpoints are intact ({checkpoint_names(output_dir)}); free space, "
                            "then --resume_from_checkpoint latest.", together=True) from err
