"""The optimizer steps of examples/train_zonkey.py: how many there are (plan_steps), forward and backward of each
micro-batch and the optimizer step after the last one (OptimizerSteps), the per-process sums gathered from every
process (MicroBatchSums, StepTotals), the checks before and after the optimizer step, when to checkpoint and why a run
stops, the line of train_log.jsonl, and the training rate."""

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from .agreement import PeerFailure, stop_together
from .run_folder import RunState, TrainingError

logger = get_logger(__name__)


def plan_steps(args, train_loader, accelerator) -> tuple[int | None, int, int]:
    """(optimizer steps per epoch, None for a stream; optimizer steps in all; epochs, at most)."""
    if args.streaming:  # no length: as many passes as the steps need (an empty pass stops the run)
        return None, args.max_train_steps, args.max_train_steps
    batches = math.ceil(len(train_loader) / accelerator.num_processes)
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    steps = args.max_train_steps or args.num_train_epochs * per_epoch
    return per_epoch, steps, math.ceil(steps / per_epoch)


@dataclass
class MicroBatchSums:
    """This process's sums over the micro-batches of the optimizer step so far (what StepTotals gathers)."""

    bytes: float = 0.0
    loss_sum: float = 0.0
    micro_batches: float = 0.0
    checksum: float = 0.0  # sum of the ids read: the data order, comparable between runs
    nonfinite_losses: float = 0.0

    def add(self, batch: dict, loss: torch.Tensor) -> None:
        mask = batch["attention_mask"]
        self.bytes += float(mask.sum())
        self.loss_sum += loss.item()
        self.micro_batches += 1.0
        self.checksum += float((batch["input_ids"] * mask).sum())
        self.nonfinite_losses += float(not torch.isfinite(loss))


@dataclass
class StepTotals:
    """One optimizer step's sums over its micro-batches, one entry per process (gathered from all of them)."""

    bytes: torch.Tensor
    loss_sum: torch.Tensor
    micro_batches: torch.Tensor
    checksum: torch.Tensor  # sum of the ids read: the data order, comparable between runs
    nonfinite_losses: torch.Tensor
    out_of_time: torch.Tensor
    nonfinite_grad_norm: torch.Tensor

    @classmethod
    def gather(cls, accelerator, sums: MicroBatchSums, out_of_time: bool, grad_norm: float) -> "StepTotals":
        """Every process's `sums` and flags, one row per process, matched to the fields by name."""
        local = {**asdict(sums), "out_of_time": float(out_of_time),
                 "nonfinite_grad_norm": float(not math.isfinite(grad_norm))}
        names = [field.name for field in fields(cls)]
        row = torch.tensor([[local[name] for name in names]], dtype=torch.float64)
        columns = accelerator.gather(row.to(accelerator.device)).cpu().T
        return cls(**dict(zip(names, columns)))

    @property
    def loss(self) -> float:
        return float(self.loss_sum.sum() / self.micro_batches.sum())


@dataclass
class OptimizerStep:
    """An optimizer step just taken: its totals over every process, this process's loss terms of its last
    micro-batch, the learning rate it used and the gradient norm before clipping."""

    totals: StepTotals
    loss_terms: dict[str, torch.Tensor]
    lr: float
    grad_norm: float


class OptimizerSteps:
    """Forward and backward of each micro-batch; after the last micro-batch of an optimizer step: clipping, the
    per-process sums gathered from every process (StepTotals), the checks that stop a diverging run before anything
    is saved, and the optimizer and scheduler steps."""

    def __init__(self, args, accelerator, model, optimizer, scheduler, started: float, progress):
        self.args, self.accelerator, self.model = args, accelerator, model
        self.optimizer, self.scheduler, self.started, self.progress = optimizer, scheduler, started, progress
        self.sums, self.bad_terms = MicroBatchSums(), {}

    def micro_batch(self, batch: dict, state: RunState, last_checkpoint: str) -> OptimizerStep | None:
        """None while gradients accumulate; else the optimizer step just taken."""
        args, accelerator, model = self.args, self.accelerator, self.model
        with accelerator.accumulate(model):
            error = None
            try:
                out = model(**batch, return_loss=True)
            except Exception as err:  # noqa: BLE001 - a failure of this process's step (its data, the model)
                logger.error(f"step {state.completed_steps + 1} failed", exc_info=True, main_process_only=False)
                error = TrainingError(f"step {state.completed_steps + 1} failed ({type(err).__name__}: {err}; "
                                      f"traceback above): stopped before its backward pass, nothing of it saved. Last "
                                      f"good checkpoint: {last_checkpoint}.", together=True)
            # every process agrees before the gradient all-reduce, which would wait for the failed one
            self.stop_together(error, f"in step {state.completed_steps + 1}")
            loss = out.loss.detach().float()
            self.sums.add(batch, loss)
            if not torch.isfinite(loss) and not self.bad_terms:
                self.bad_terms = {k: round(v.item(), 4) for k, v in out.loss_terms.items()}
            accelerator.backward(out.loss)  # every process takes part in the gradient all-reduce, even on NaN
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor (FSDP2)
                out_of_time = (args.max_train_minutes is not None
                               and (time.time() - self.started) / 60 >= args.max_train_minutes)
                totals = StepTotals.gather(accelerator, self.sums, out_of_time, grad_norm)
                self.sums = MicroBatchSums()
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
        return OptimizerStep(totals, out.loss_terms, lr, grad_norm) if accelerator.sync_gradients else None

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


def step_error(totals: StepTotals, accelerator, state: RunState, bad_terms: list[dict],
               last_checkpoint: str) -> str | None:
    """Before the optimizer step: a non-finite loss or gradient norm on any process (fp16's GradScaler skips inf
    gradients by design) is an error naming the processes, the loss terms, and the last good checkpoint.
    `bad_terms`: each process's loss terms at its first non-finite loss ({} where the loss was finite). A loss that is
    non-finite on one process makes every process's gradients non-finite (they are averaged), so the processes named
    are those whose loss was non-finite, or, without one, those whose gradient norm was."""
    bad_grads = totals.nonfinite_grad_norm.sum() > 0 and accelerator.scaler is None
    bad_losses = totals.nonfinite_losses.sum() > 0
    if not bad_losses and not bad_grads:
        return None
    flags = totals.nonfinite_losses if bad_losses else totals.nonfinite_grad_norm
    where = [i for i in range(len(flags)) if flags[i] > 0]
    terms = "; ".join(f"process {i}: {t}" for i, t in enumerate(bad_terms) if t) or "finite"
    return (f"non-finite {'loss' if bad_losses else 'gradient norm'} at step {state.completed_steps + 1} on "
            f"process(es) {where} (loss terms: {terms}): stopped before the optimizer step, nothing saved. Last good "
            f"checkpoint: {last_checkpoint}. Resume from it (--resume_from_checkpoint latest) with a lower "
            f"--learning_rate or more --num_warmup_steps.")


def weights_are_finite(model: torch.nn.Module) -> bool:
    """After an optimizer step: a finite gradient times a huge learning rate can still overflow the weights."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm([p.detach() for p in model.parameters()]))).all())


def stop_reason(args, state: RunState, max_steps: int, totals: StepTotals) -> str | None:
    """None: the run goes on after this step; else why it stops ("" when it simply reached its last step). Every
    process sees the same totals, so all stop at the same step."""
    stop_early = args.stop_after_steps is not None and state.completed_steps >= args.stop_after_steps
    if totals.out_of_time.sum() > 0:
        return f"--max_train_minutes {args.max_train_minutes} reached at step {state.completed_steps}"
    if stop_early and state.completed_steps < max_steps:
        return (f"--stop_after_steps: stopped at step {state.completed_steps} of {max_steps}; continue with "
                "--resume_from_checkpoint latest")
    return "" if stop_early or state.completed_steps >= max_steps else None


def checkpoint_due(args, state: RunState, totals: StepTotals) -> bool:
    """Every --checkpointing_steps steps, at --stop_after_steps, and when --max_train_minutes ends a run that
    checkpoints."""
    every = str(args.checkpointing_steps).isdigit() and state.completed_steps % int(args.checkpointing_steps) == 0
    stop_early = args.stop_after_steps is not None and state.completed_steps >= args.stop_after_steps
    return every or stop_early or bool(totals.out_of_time.sum() > 0 and args.checkpointing_steps is not None)


def log_step(path: Path, state: RunState, totals: StepTotals, lr: float, grad_norm: float) -> None:
    """One line of train_log.jsonl (main process)."""
    with open(path, "a") as handle:
        handle.write(json.dumps({
            "step": state.completed_steps, "epoch": state.epoch, "loss": totals.loss, "lr": lr, "grad_norm": grad_norm,
            "train_bytes": state.train_bytes, "process_bytes": totals.bytes.long().tolist(),
            "process_checksum": totals.checksum.long().tolist(), "threads": torch.get_num_threads()}) + "\n")


class Throughput:
    """Training bytes per second since the previous call (the progress bar's and the tracker's rate)."""

    def __init__(self, start: float, train_bytes: int):
        self.time, self.bytes = start, train_bytes

    def rate(self, train_bytes: int) -> float:
        now = time.time()
        rate = (train_bytes - self.bytes) / max(now - self.time, 1e-9)
        self.time, self.bytes = now, train_bytes
        return rate
