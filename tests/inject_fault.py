"""Runs examples/train_zonkey.py with one fault injected on one process (tests only; launched like the script,
e.g. by `accelerate launch ... tests/inject_fault.py ARGS`). ZONKEY_TEST_FAULT=KIND:RANK:STEP picks it:

- raise:    the model's forward raises RuntimeError on process RANK at optimizer step STEP (an exception in its step);
- nan:      the loss of process RANK is NaN at step STEP (a divergence only that process sees);
- enospc:   process RANK's save_state of the checkpoint step_STEP fails with "No space left on device" after writing
            part of a file;
- kill:     process RANK sends itself SIGKILL at the start of step STEP (kill -9);
- hang:     process RANK sleeps for an hour at the start of step STEP (alive, but never reaches the next collective).

The faults are patched in from outside, as the single-process tests monkeypatch the script in-process: the script
itself has no fault-injection code."""

import errno
import os
import runpy
import signal
import sys
import time
from pathlib import Path

from accelerate import Accelerator, PartialState

from modeling_zonkey import ZonkeyModel

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_zonkey.py"
KIND, RANK, STEP = os.environ["ZONKEY_TEST_FAULT"].split(":")
RANK, STEP = int(RANK), int(STEP)
training_calls = [0]
forward = ZonkeyModel.forward


def faulty_forward(self, *args, **kwargs):
    """Counts the training forwards (one per optimizer step without accumulation) and injects the fault at STEP."""
    if not self.training or PartialState().process_index != RANK:
        return forward(self, *args, **kwargs)
    training_calls[0] += 1
    if training_calls[0] == STEP:
        stamp(f"{KIND} at step {STEP}")
        if KIND == "raise":
            raise RuntimeError("injected fault in the training step")
        if KIND == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if KIND == "hang":
            time.sleep(3600)
    output = forward(self, *args, **kwargs)
    if KIND == "nan" and training_calls[0] == STEP:
        output.loss = output.loss * float("nan")
    return output


save_state = Accelerator.save_state


def faulty_save_state(self, output_dir=None, **kwargs):
    if KIND == "enospc" and self.process_index == RANK and Path(output_dir).name == f".tmp-step_{STEP}":
        stamp(f"enospc while writing step_{STEP}")
        os.makedirs(output_dir, exist_ok=True)
        (Path(output_dir) / f"part_{RANK}.bin").write_bytes(b"part of a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save_state(self, output_dir, **kwargs)


def stamp(what: str) -> None:
    """The moment of the fault, for measuring how long the other processes take to stop."""
    print(f"fault injected: {what} on process {RANK} at {time.time():.3f}", file=sys.stderr, flush=True)


ZonkeyModel.forward = faulty_forward
Accelerator.save_state = faulty_save_state
sys.argv = [str(SCRIPT), *sys.argv[1:]]
runpy.run_path(str(SCRIPT), run_name="__main__")
