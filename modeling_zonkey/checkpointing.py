"""Training-state checkpoints written atomically, found again by "latest", and an EMA of the weights.

A checkpoint folder `step_N` (or `epoch_N`) is first written as `.tmp-step_N` and renamed when complete,
so a run killed mid-save leaves the previous checkpoints intact and never a half-written one.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

STATE_FILE = "training_state.json"
_NAME = re.compile(r"^(step|epoch)_(\d+)$")


def save_checkpoint(accelerator, output_dir: str | os.PathLike, name: str, state: dict) -> Path | None:
    """accelerator.save_state into output_dir/name atomically, with `state` (step, epoch, ...) as JSON.
    Every process must call it (save_state gathers); only the main process renames."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f".tmp-{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir: str | os.PathLike, requested: str) -> Path:
    """Resolve --resume_from_checkpoint: a folder, or "latest" (the complete step_/epoch_ folder with the most
    optimizer steps in output_dir). Raises FileNotFoundError with what to fix."""
    if requested != "latest":
        path = Path(requested)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume_from_checkpoint {requested}: not a complete checkpoint folder "
                                    f"(no {STATE_FILE}); pass a step_N/epoch_N folder or 'latest'.")
        return path
    candidates = []
    for path in Path(output_dir).glob("*"):
        if _NAME.match(path.name) and (path / STATE_FILE).is_file():
            candidates.append((json.loads((path / STATE_FILE).read_text())["completed_steps"], path))
    if not candidates:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
    return max(candidates)[1]


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


class EMA(nn.Module):
    """Exponential moving average of a model's floating-point parameters (shadow = d shadow + (1 - d) param).
    Its state_dict is checkpointed with the rest (accelerator.register_for_checkpointing)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            self.register_buffer(f"shadow_{i}", params[name].detach().clone().float())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            getattr(self, f"shadow_{i}").lerp_(params[name].detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            params[name].copy_(getattr(self, f"shadow_{i}").to(params[name].dtype))
