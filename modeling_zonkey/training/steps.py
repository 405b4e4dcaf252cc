"""One optimizer step's bookkeeping in examples/train_zonkey.py: the per-process sums gathered from every process
(StepTotals), the checks before and after the optimizer step, why a run stops, and the line of train_log.jsonl."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .run_folder import RunState


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
    def gather(cls, accelerator, pending: list[float], out_of_time: bool, grad_norm: float) -> "StepTotals":
        local = torch.tensor([[*pending, float(out_of_time), float(not math.isfinite(grad_norm))]], dtype=torch.float64)
        return cls(*accelerator.gather(local.to(accelerator.device)).cpu().T)

    @property
    def loss(self) -> float:
        return float(self.loss_sum.sum() / self.micro_batches.sum())


def micro_batch_sums(batch: dict, loss: torch.Tensor) -> list[float]:
    """bytes, loss, 1 micro-batch, data checksum, non-finite loss: what StepTotals adds up."""
    mask = batch["attention_mask"]
    return [float(mask.sum()), loss.item(), 1.0, float((batch["input_ids"] * mask).sum()),
            float(not torch.isfinite(loss))]


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


def log_step(path: Path, state: RunState, totals: StepTotals, lr: float, grad_norm: float) -> None:
    """One line of train_log.jsonl (main process)."""
    with open(path, "a") as handle:
        handle.write(json.dumps({
            "step": state.completed_steps, "epoch": state.epoch, "loss": totals.loss, "lr": lr, "grad_norm": grad_norm,
            "train_bytes": state.train_bytes, "process_bytes": totals.bytes.long().tolist(),
            "process_checksum": totals.checksum.long().tolist(), "threads": torch.get_num_threads()}) + "\n")


def weights_are_finite(model: torch.nn.Module) -> bool:
    """After an optimizer step: a finite gradient times a huge learning rate can still overflow the weights."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm([p.detach() for p in model.parameters()]))).all())
