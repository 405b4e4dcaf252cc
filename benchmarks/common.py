"""What every benchmark prints in its header."""

import os


def machine_line() -> str:
    """Load and OpenMP settings: on a busy machine, OpenMP worker threads that spin (the default
    OMP_WAIT_POLICY) while a sibling thread is descheduled can make multi-threaded steps many times slower."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} CPUs, load average {load}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")


def configure_threads(threads: str | int | None) -> None:
    """torch.set_num_threads(threads) when given; "auto": the training script's choice, the cores other processes
    leave free (modeling_zonkey/training/threads.py); None: torch's own default."""
    import torch

    from modeling_zonkey.training.threads import ThreadGovernor

    if threads == "auto":
        ThreadGovernor(None).start()
    elif threads:
        torch.set_num_threads(int(threads))
