"""Benchmark: Zonkey generation throughput against a flat byte-level autoregressive transformer.

Zonkey samples from top-level noise with `--steps` denoising steps (DDMM sampler) and decodes down through
every level; its bytes/s counts the bytes it actually returned. The baseline is a GPT-2-style byte model
of about the same parameter count (modeling_zonkey/evaluation/baseline.py), generating the same number of bytes per
sample (Zonkey's mean output length) with transformers' generate(), sampling, with its key/value cache.
Both run in the same process, alternately, and the median of `--repeats` timed calls (after one warm-up)
is reported, so the ratio is measured under the same machine load.

    python benchmarks/bench_generation.py --model runs/zonkey-tiny             # a trained folder
    python benchmarks/bench_generation.py --config configuration/zonkey-tiny.json   # random weights
    python benchmarks/bench_generation.py --model pretrained/zonkey-tiny-sentences --max_new_tokens 100 1000 4000
        # long samples: windows chained by generate(max_new_tokens=N); the time per byte should stay flat in N
"""

import argparse
import json
import statistics
import time

import torch
from common import machine_line  # benchmarks/common.py (scripts run from this folder's path)
from transformers import AutoModel

import modeling_zonkey  # noqa: F401  (registers the Auto classes)
from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.baseline import char_baseline


def median_seconds(function, repeats: int, warmup: bool = True) -> tuple[float, object]:
    result = function() if warmup else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a saved Zonkey folder (e.g. runs/zonkey-tiny)")
    source.add_argument("--config", default="configuration/zonkey-tiny.json", help="a preset, random weights")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_warmup", action="store_true", help="skip the untimed first call (long samples)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--options", type=json.loads, default={},
                        help='other generation options, a JSON object, e.g. \'{"clamp_min_existence": 0.5}\'')
    parser.add_argument("--no_clamp", action="store_true", help="sample without clamping (faster, collapsed samples)")
    parser.add_argument("--max_new_tokens", "--max_new_bytes", type=int, nargs="+", default=None,
                        help="sample lengths to measure, each written as chained windows (default: one window)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:
        model, name = AutoModel.from_pretrained(args.model).eval(), args.model
    else:
        torch.manual_seed(0)
        model, name = ZonkeyModel(ZonkeyConfig.from_pretrained(args.config)).eval(), f"{args.config} (random weights)"
    zonkey_parameters = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    baseline = char_baseline(zonkey_parameters, context=max([1024, *(n + 2 for n in args.max_new_tokens or [])])).eval()
    baseline_parameters = sum(p.numel() for p in baseline.parameters())

    print(machine_line() + f"; torch threads {torch.get_num_threads()}")
    print(f"Zonkey: {name}, {zonkey_parameters:,} parameters, {args.steps} denoising steps, DDMM sampler, "
          f"clamping {'off' if args.no_clamp else 'on'}, options {json.dumps(args.options)}")
    print(f"baseline: byte-level GPT-2, {baseline.config.n_layer} layers x {baseline.config.n_embd}, "
          f"{baseline_parameters:,} parameters, KV cache, sampling\n")
    print("| batch | bytes / sample | Zonkey s | Zonkey ms / byte | Zonkey bytes/s | baseline s | baseline bytes/s | "
          "Zonkey / baseline |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for batch, length in [(b, n) for b in args.batch_sizes for n in (args.max_new_tokens or [None])]:
        zonkey_time, ids = median_seconds(
            lambda: model.generate(num_return_sequences=batch, num_steps=args.steps, seed=0, clamp=not args.no_clamp,
                                   max_new_tokens=length, **args.options),
            args.repeats, not args.no_warmup)
        produced = int((ids != model.config.pad_token_id).sum())
        per_sample = max(1, round(produced / batch))
        prompt = torch.full((batch, 1), ord(" "), dtype=torch.long)

        def run_baseline():
            with torch.no_grad():
                return baseline.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                         max_new_tokens=per_sample, min_new_tokens=per_sample, use_cache=True,
                                         pad_token_id=model.config.pad_token_id)

        baseline_time, _ = median_seconds(run_baseline, args.repeats, not args.no_warmup)
        zonkey_rate, baseline_rate = produced / zonkey_time, batch * per_sample / baseline_time
        print(f"| {batch} | {produced / batch:.1f} | {zonkey_time:.3f} | {1000 * zonkey_time / produced:.2f} | "
              f"{zonkey_rate:,.0f} | {baseline_time:.3f} | {baseline_rate:,.0f} | {zonkey_rate / baseline_rate:.2f}x |")
        if length is not None:
            continue
        notes.append(f"batch {batch}: the baseline would need {zonkey_time / (baseline_time / per_sample):.0f} "
                     f"bytes per sample to take as long as Zonkey's {args.steps} steps (Zonkey's time does not grow "
                     f"with the output length, up to {model.config.window_length[-1]} top-level positions per sample)")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
