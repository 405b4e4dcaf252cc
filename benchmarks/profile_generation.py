"""Profile: where a generate() call spends its time, by paper component (issue #13).

Wall time inside each component's forward is summed with forward hooks (outermost calls only, so a component
called inside another is not counted twice): the top level's decoder (the denoiser) and compressor (the
re-compression of every step), the level-0 decoder and compressor (which clamping runs at every step of a
two-level model, and the final decode), the stitcher, the splitter. "other" is the rest of the call (noise
draws, nearest-byte search, Python).

    python benchmarks/profile_generation.py --model pretrained/zonkey-tiny-sentences
    python benchmarks/profile_generation.py --model pretrained/zonkey-tiny-sentences --batch_size 1 --max_new_bytes 200
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import configure_threads, machine_line  # benchmarks/common.py (scripts run from this folder's path)
from transformers import AutoModel

import modeling_zonkey  # noqa: F401  (registers the Auto classes)


def component_timers(model) -> tuple[dict[str, float], dict[str, int]]:
    """Forward hooks that add each component's wall time (outermost calls only) to the returned dicts."""
    seconds, calls, depth, started = defaultdict(float), defaultdict(int), [0], {}
    for level in model.levels:
        for name in ("decoder", "compressor", "stitcher", "splitter"):
            module = getattr(level, name, None)
            if module is None:
                continue
            label = f"level {level.level} {name}"

            def before(_module, _inputs, label=label):
                depth[0] += 1
                if depth[0] == 1:
                    started[label] = time.perf_counter()

            def after(_module, _inputs, _output, label=label):
                if depth[0] == 1 and label in started:
                    seconds[label] += time.perf_counter() - started.pop(label)
                    calls[label] += 1
                depth[0] -= 1

            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = Path(__file__).resolve().parents[1] / "pretrained" / "zonkey-tiny-sentences"
    parser.add_argument("--model", default=str(shipped))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max_new_bytes", type=int, default=None, help="chained windows (default: one window)")
    parser.add_argument("--options", type=json.loads, default={},
                        help='other generation options, a JSON object, e.g. \'{"clamp_min_existence": 0.5}\'')
    parser.add_argument("--no_clamp", action="store_true")
    parser.add_argument("--threads", default=None)
    args = parser.parse_args()
    configure_threads(args.threads)
    model = AutoModel.from_pretrained(args.model).eval()
    options = dict(num_return_sequences=args.batch_size, num_steps=args.steps, seed=0, clamp=not args.no_clamp,
                   max_new_bytes=args.max_new_bytes, **args.options)
    model.generate(**{**options, "num_steps": 2, "max_new_bytes": None})  # warm-up
    seconds, calls = component_timers(model)
    start = time.perf_counter()
    ids = model.generate(**options)
    total = time.perf_counter() - start
    produced = int((ids != model.config.pad_token_id).sum())
    print(machine_line() + f"; torch threads {torch.get_num_threads()}")
    print(f"{args.model}: batch {args.batch_size}, {args.steps} steps, clamping {'off' if args.no_clamp else 'on'}, "
          f"options {json.dumps(args.options)}, "
          f"{produced / args.batch_size:.1f} bytes / sample, {total:.2f} s ({1000 * total / produced:.1f} ms / byte)\n")
    print("| component | calls | s | share |")
    print("|---|---:|---:|---:|")
    for label in sorted(seconds, key=lambda k: -seconds[k]):
        print(f"| {label} | {calls[label]} | {seconds[label]:.2f} | {100 * seconds[label] / total:.0f}% |")
    other = total - sum(seconds.values())
    print(f"| other | | {other:.2f} | {100 * other / total:.0f}% |")


if __name__ == "__main__":
    main()
