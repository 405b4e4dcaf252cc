"""How a training run starts and ends on its processes (examples/train_zonkey.py): the Accelerator (CPU processes
joined in one group, deterministic algorithms, the collective timeout), the checks of launches that do not do what
they seem to, torch's CPU threads, and the exit of processes that stop together or lost a peer.
"""

import os
import sys
from datetime import timedelta

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    PartialState,
)
from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from .run_folder import TrainingError
from .threads import ThreadGovernor, fixed_threads

logger = get_logger(__name__)


def make_accelerator(args) -> Accelerator:
    """The Accelerator of this run: CPU processes in one gloo group, the seedable data order, --ddp_timeout at the
    collectives (and torch's deterministic algorithms first, with --deterministic)."""
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
    return accelerator


def check_launch(args, accelerator) -> None:
    """Warn about launches that do not do what they seem to, and refuse FSDP setups the run does not support."""
    if (accelerator.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
            and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ):
        print("warning: `accelerate launch --cpu --num_processes N` starts ONE process (accelerate's CPU launcher "
              "expects mpirun): this run is single-process. For N processes on CPUs use `accelerate launch "
              "--config_file configuration/accelerate-cpu-ddp-2.yaml ...` (or `--multi_gpu --num_processes N`).",
              file=sys.stderr, flush=True)
    if getattr(args, "unfreeze_at_step", None) is not None and accelerator.num_processes > 1:
        raise TrainingError("--unfreeze_at_step needs one process: several processes synchronise only the parameters "
                            "that trained when the run began. Run two stages instead: --freeze_levels ... "
                            "--max_train_steps N, then --model_name_or_path that folder without --freeze_levels.")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not fsdp:
        accelerator.print(f"warning: FSDP was requested but needs GPUs; running {accelerator.distributed_type.value} "
                          "instead (every process holds the whole model).")
    if fsdp and args.ema_decay is not None:
        raise TrainingError("--ema_decay is not supported with FSDP (each process holds a shard of the weights).")
    if fsdp and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise TrainingError("use FSDP2 (fsdp_version: 2, as in configuration/accelerate-fsdp.yaml): the evaluation "
                            "gathers the shards with FSDP2's unshard().")


def make_deterministic() -> None:
    """torch's deterministic algorithms (and cuBLAS's fixed-order workspace on CUDA, where an op without a
    deterministic kernel warns instead of failing: see docs/training.md for what a GPU run can promise)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def launched_on_cpus() -> bool:
    """True when started as several processes (torchrun, `accelerate launch --multi_gpu`, or
    configuration/accelerate-cpu-ddp-2.yaml) on a machine without a GPU. Accelerate then needs cpu=True to join
    the processes in one gloo group; without it each process would train alone on all the data."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return several and not gpu


def start_threads(args, saved_args: dict) -> ThreadGovernor:
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


def end_processes(accelerator) -> None:
    """End a finished run's trackers and process group (every process calls it once, after its last collective).

    It waits at a barrier first. A gloo worker thread releases a finished collective's tensors after the caller's wait
    returned, and releasing them takes the GIL; if the main thread, holding the GIL, destroys the process group (as the
    DDP reducer is freed when training returns) before that, it joins the worker thread and both wait for ever. On a
    loaded 2-core machine, 1 run in 2 of the 2-process test hung so after the final save's all-gather. While it waits
    at the barrier, the main thread leaves the GIL to the worker threads."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


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


def lost_another_process(err: RuntimeError) -> bool:
    """A collective that failed because a peer process died (its connection closed) or hung past the timeout:
    torch's DistError (NCCL and newer backends), or gloo's transport errors, which are plain RuntimeErrors."""
    return (PartialState().num_processes > 1
            and (isinstance(err, torch.distributed.DistError) or "gloo/transport" in str(err)))
