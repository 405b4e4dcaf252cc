"""Benchmark: training cost per byte as documents grow, Zonkey vs the flat byte-level baseline (equal size).

For each document length N (default 256 512 1024 2048 4096 8192 bytes) and each model, a fresh subprocess
builds the model, runs `--warmup` + `--steps` training steps (forward, backward, AdamW) on `--batch_size`
documents of N bytes of English-looking text and prints the median step time and the process's peak RSS.
Zonkey is the tiny preset with document_length = [N, N / 4] (level 1 reads at most N / 4 latents per row);
at most max_decoded_segments = 256 level-0 segments per batch go through the decoder, as in training. The
baseline is the byte-level GPT-2 of the same parameter count with a context of N (its attention is
quadratic in N; torch SDPA). Subprocesses alternate between the two models so that machine load hits both.

    python benchmarks/bench_scaling.py [--lengths 512 2048 8192] [--threads 1]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine_line  # benchmarks/common.py (scripts run from this folder's path)

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there one all we their been has would when who will more no if out so what").split()


def text_batch(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        text = ""
        while len(text) < length:
            text += WORDS[int(torch.randint(len(WORDS), (1,), generator=generator))] + " "
        rows.append(list(text.encode()[:length]))
    return torch.tensor(rows)


def measure(model_name: str, length: int, batch: int, steps: int, warmup: int, config_path: str) -> dict:
    """One configuration, in this process: median training-step seconds and peak RSS."""
    from modeling_zonkey import ZonkeyConfig, ZonkeyModel
    from modeling_zonkey.evaluation.baseline import char_baseline

    torch.manual_seed(0)
    config = ZonkeyConfig.from_pretrained(str(ROOT / config_path if not Path(config_path).is_file() else config_path))
    config.document_length = [length, max(16, length // 4)]
    zonkey = ZonkeyModel(config)
    parameters = sum(p.numel() for p in zonkey.parameters())
    if model_name == "zonkey":
        model = zonkey
        def loss_of(ids):
            return model(ids, return_loss=True).loss
    else:
        del zonkey
        model = char_baseline(parameters, context=length)
        parameters = sum(p.numel() for p in model.parameters())
        def loss_of(ids):
            return model(input_ids=ids, labels=ids).loss
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-7)
    ids = text_batch(batch, length)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_of(ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": model_name, "length": length, "parameters": parameters, "step_s": seconds,
            "bytes_per_s": batch * length / seconds,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--config", default="configuration/zonkey-tiny.json",
                        help="Zonkey preset (its document_length is replaced by [N, N / 4])")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch_size, args.steps, args.warmup, args.config)))
        return
    print(machine_line() + f"; batch {args.batch_size} document(s), median of {args.steps} training steps; "
          f"Zonkey: {args.config}")
    print("\n| bytes / document | Zonkey ms / byte | baseline ms / byte | Zonkey / baseline time | Zonkey peak MiB | "
          "baseline peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    last = None
    for length in args.lengths:
        rows = {}
        for name in ("zonkey", "baseline"):
            command = [sys.executable, __file__, "--one", name, str(length), "--batch_size", str(args.batch_size),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--config", args.config]
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows[name] = None
                print(f"({name} at {length} bytes failed: {done.stderr.strip().splitlines()[-1]})", file=sys.stderr)
                continue
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        z, b = rows["zonkey"], rows["baseline"]
        if z is None or b is None:
            continue
        per_byte = [1000 * r["step_s"] / (args.batch_size * length) for r in (z, b)]
        print(f"| {length} | {per_byte[0]:.3f} | {per_byte[1]:.3f} | {per_byte[0] / per_byte[1]:.2f}x | "
              f"{z['peak_mib']:,.0f} | {b['peak_mib']:,.0f} |", flush=True)
        last = (z, b)
    if last is not None:
        print(f"\nparameters: Zonkey {last[0]['parameters']:,}, baseline {last[1]['parameters']:,} "
              "(at the last length)")


if __name__ == "__main__":
    main()
