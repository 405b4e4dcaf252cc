"""Benchmark: a Zonkey training step on an idle and on a busy machine, per thread count and OpenMP wait policy.

Each setting runs `bench_training_step.py` (zonkey-tiny, 8 x 256 bytes, median of `--steps` steps) in a fresh
process (OpenMP reads OMP_WAIT_POLICY once, at start-up), first on the idle machine and then while `--hogs`
other processes spin on a core each (a stand-in for any CPU-bound neighbour: another training run, a test suite).
The last column is what the neighbour costs: busy / idle step time. With 2 cores and one neighbour, a fair
share is 2x for a 2-thread step (one core left) and 1x for a 1-thread step.

    python benchmarks/bench_busy_machine.py [--steps 5] [--hogs 1]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import machine_line

HERE = Path(__file__).resolve().parent
SETTINGS = [  # (label, environment, extra arguments)
    ("2 threads, OMP_WAIT_POLICY unset (spinning)", {"OMP_NUM_THREADS": "2"}, []),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, []),
    ("2 threads, GOMP_SPINCOUNT=10000", {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"}, []),
    ("1 thread", {"OMP_NUM_THREADS": "1"}, []),
    ("--threads auto (the training script's default)", {}, ["--threads", "auto"]),
]
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def step_seconds(env: dict[str, str], extra: list[str], steps: int, config: str) -> float:
    environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environment.update(env)
    done = subprocess.run([sys.executable, str(HERE / "bench_training_step.py"), "--skip_parameters",
                           "--config", config, "--steps", str(steps), "--warmup", "2", *extra],
                          capture_output=True, text=True, env=environment, cwd=HERE)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {Path(config).stem} "))
    return float(row.split("|")[5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound neighbour processes during the busy runs")
    parser.add_argument("--config", default="configuration/zonkey-tiny.json")
    args = parser.parse_args()
    print(machine_line())
    print(f"zonkey training step ({Path(args.config).stem}, 8 x 256 bytes), median of {args.steps} steps; "
          f"busy = {args.hogs} spinning neighbour process(es)\n")
    idle = {label: step_seconds(env, extra, args.steps, args.config) for label, env, extra in SETTINGS}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        time.sleep(1.0)
        busy = {label: step_seconds(env, extra, args.steps, args.config) for label, env, extra in SETTINGS}
    finally:
        for hog in hogs:
            hog.kill()
    print("| setting | environment | idle step s | busy step s | busy / idle |")
    print("|---|---|---:|---:|---:|")
    for label, env, extra in SETTINGS:
        shown = " ".join([f"{k}={v}" for k, v in sorted(env.items())] + extra)
        print(f"| {label} | {shown} | {idle[label]:.3f} | {busy[label]:.3f} | {busy[label] / idle[label]:.2f}x |")


if __name__ == "__main__":
    main()
