"""Processes of a multi-process run that stop together (used by examples/train_zonkey.py and checkpointing.py).

Where one process can fail alone (an exception in its training step, a full disk while it writes its part of a
checkpoint), every process reports at the same point whether it failed, in one all-gather of a flag. When one did,
all stop there: the failing process raises its own error (the run's one `error:` line), the others raise
PeerFailure and exit quietly with status 1. Without this, the others would wait at their next collective until the
process group's timeout (`--ddp_timeout`), or until the launcher kills them.
"""

import torch


class PeerFailure(Exception):
    """Another process failed at a point where every process checks (failed_processes); this one stops too. The
    message names the failed processes; their own error line says why."""


def failed_processes(accelerator, failed: bool) -> list[int]:
    """The indices of the processes that passed failed=True. Every process must call it at the same point (it is a
    collective); on a single process it costs one small tensor copy."""
    flags = accelerator.gather(torch.tensor([float(failed)], device=accelerator.device))
    return [index for index, flag in enumerate(flags.tolist()) if flag]


def stop_together(accelerator, error: BaseException | None, where: str) -> None:
    """Raise `error` on the process that met it and PeerFailure on every other process, when any process met one;
    return normally on all of them otherwise. `where`: what failed, for the others' message (e.g. "in step 3")."""
    failed = failed_processes(accelerator, error is not None)
    if error is not None:
        raise error
    if failed:
        raise PeerFailure(f"process(es) {failed} failed {where}; this process stopped with them (their error line "
                          "says why).")
