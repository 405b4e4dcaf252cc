"""Benchmark: does `--torch_compile` pay off? Eager vs torch.compile'd training steps, alternating in one process.

Two copies of zonkey-tiny with the same weights: one eager, one whose decoders and compressors are compiled
(`ZonkeyModel.compile_components`, what the training script's --torch_compile does; dynamic shapes, since the
number of segments changes every step). The compiled copy's first steps compile (timed); then the copies take
`--steps` training steps each, alternating, so that machine load hits both alike. Prints compile time,
median steady step times and their ratio, and the break-even run length.

    python benchmarks/bench_compile.py [--steps 8] [--components decoder compressor]
"""

import argparse
import copy
import statistics
import time

import torch
from bench_training_step import load_config, make_batch  # benchmarks/ (scripts run from this folder's path)
from common import configure_threads, machine_line

from modeling_zonkey import ZonkeyModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configuration/zonkey-tiny.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile_steps", type=int, default=4,
                        help="steps given to the compiled copy before timing (recompilations happen in the first few)")
    parser.add_argument("--components", nargs="+", default=["decoder", "compressor"])
    parser.add_argument("--threads", default=None)
    args = parser.parse_args()
    configure_threads(args.threads)
    config = load_config(args.config)
    ids = make_batch(args.batch_size, config.document_length[0], 0)
    torch.manual_seed(0)
    eager = ZonkeyModel(config).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_components(args.components)
    models = {"eager": eager, "compiled": compiled}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=3e-4, eps=1e-7) for name, m in models.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        optimizers[name].zero_grad(set_to_none=True)
        models[name](ids, return_loss=True).loss.backward()
        optimizers[name].step()
        return time.perf_counter() - start

    compile_times = [step("compiled") for _ in range(args.compile_steps)]
    step("eager")
    times = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        for name in times:
            times[name].append(step(name))
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    overhead = sum(compile_times) - args.compile_steps * compiled_s
    print(machine_line())
    print(f"{args.config}, {args.batch_size} x {config.document_length[0]} bytes, threads "
          f"{torch.get_num_threads()}, compiled: {', '.join(args.components)}; torch {torch.__version__}\n")
    print("| compile (first steps, s) | eager step s | compiled step s | compiled / eager | break-even after |")
    print("|---:|---:|---:|---:|---:|")
    gain = eager_s - compiled_s
    breakeven = f"{overhead / gain * eager_s / 60:.0f} min of training" if gain > 0 else "never"
    print(f"| {sum(compile_times):.0f} ({', '.join(f'{t:.0f}' for t in compile_times)}) | {eager_s:.3f} | "
          f"{compiled_s:.3f} | {compiled_s / eager_s:.2f}x | {breakeven} |")


if __name__ == "__main__":
    main()
