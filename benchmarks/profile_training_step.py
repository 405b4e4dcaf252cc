"""Profile: where a Zonkey training step spends its time, by component and by op (torch.profiler, CPU).

The step is the training script's: forward with return_loss, backward, clip_grad_norm_, AdamW. Each paper
component (splitter, segments, compressor, masked-vector head, the decoder's decompressor and denoiser in each
of its passes, stitcher, the losses) is labelled with `torch.profiler.record_function` through forward hooks;
a backward op is charged to the component whose forward op created it (matched by autograd sequence number),
so the component table shows forward and backward milliseconds side by side. The op table lists the top ops by
self CPU time over the profiled steps.

    python benchmarks/profile_training_step.py                                   # zonkey-tiny, 8 x 256 bytes
    python benchmarks/profile_training_step.py --config configuration/zonkey-micro.json --steps 2 --threads 1
    python benchmarks/profile_training_step.py --trace runs/step_trace.json     # Chrome / Perfetto trace too
"""

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import torch
from bench_training_step import load_config, make_batch  # benchmarks/ (scripts run from this folder's path)
from common import configure_threads, machine_line
from torch.profiler import ProfilerActivity, profile, record_function

import modeling_zonkey.level as level_module
from modeling_zonkey import ZonkeyModel

# Module paths (relative to a level) that get their own label; the innermost enclosing label wins.
COMPONENTS = ("splitter", "compressor", "masked_vector", "decoder.decompressor", "decoder.denoiser", "stitcher")
# Functions of level.py that get a label (patched for the profile only).
FUNCTIONS = ("build_segments", "pad_by_document", "chunk_documents")


def label_modules(model: ZonkeyModel) -> None:
    """Forward pre/post hooks that open and close a record_function range per component."""
    for index, level in enumerate(model.levels):
        for path in COMPONENTS:
            try:
                module = level.get_submodule(path)
            except AttributeError:  # masked_vector is None at level 0
                continue
            name = f"L{index}.{path.split('.')[-1]}"

            def enter(module, args, name=name):
                module._profile_ranges = getattr(module, "_profile_ranges", [])
                module._profile_ranges.append(record_function(name).__enter__())

            def leave(module, args, output):
                module._profile_ranges.pop().__exit__(None, None, None)

            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)
        for method in ("loss_terms", "reconstruction", "diffusion_terms", "stitcher_terms"):
            wrap_method(level, method, f"L{index}.{method}")
    model.byte_embeddings.register_forward_pre_hook(lambda m, a: setattr(m, "_r", record_function("embed").__enter__()))
    model.byte_embeddings.register_forward_hook(lambda m, a, o: m._r.__exit__(None, None, None))


def wrap_method(obj, name: str, label: str) -> None:
    original = getattr(obj, name)

    def wrapped(*args, **kwargs):
        with record_function(label):
            return original(*args, **kwargs)

    setattr(obj, name, wrapped)


def label_functions() -> None:
    for name in FUNCTIONS:
        original = getattr(level_module, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            with record_function(_name):
                return _original(*args, **kwargs)

        setattr(level_module, name, wrapped)


def component_of(event, labels: set[str]) -> str:
    """The innermost labelled range that encloses a forward event."""
    parent = event
    while parent is not None:
        if parent.name in labels:
            return parent.name
        parent = parent.cpu_parent
    return "(other)"


def tables(prof, steps: int, labels: set[str]) -> None:
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    forward_of: dict[int, str] = {}
    forward_ms: collections.Counter = collections.Counter()
    backward_ms: collections.Counter = collections.Counter()
    optimizer_ms = 0.0
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            continue
        if e.sequence_nr >= 0 and e.fwd_thread is not None and not _in_backward(e):
            forward_of.setdefault(e.sequence_nr, component_of(e, labels))
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            backward_ms[forward_of.get(e.sequence_nr, "(other)")] += e.cpu_time_total / 1000
    # forward: self time of every op under a label (innermost label)
    for e in events:
        if _in_backward(e) or e.name.startswith("Optimizer") or e.name.startswith("ProfilerStep"):
            continue
        if e.cpu_parent is None and not e.name.startswith("forward"):
            continue
        forward_ms[component_of(e, labels)] += e.self_cpu_time_total / 1000
    for e in events:
        if e.name.startswith("Optimizer.step") or e.name == "clip_grad_norm":
            optimizer_ms += e.cpu_time_total / 1000
    names = sorted(set(forward_ms) | set(backward_ms), key=lambda n: -(forward_ms[n] + backward_ms[n]))
    total = sum(forward_ms.values()) + sum(backward_ms.values()) + optimizer_ms
    print("\n| component | forward ms / step | backward ms / step | share of step |")
    print("|---|---:|---:|---:|")
    for name in names:
        f, b = forward_ms[name] / steps, backward_ms[name] / steps
        print(f"| {name} | {f:.1f} | {b:.1f} | {100 * (f + b) / (total / steps):.1f}% |")
    print(f"| clip + AdamW | {optimizer_ms / steps:.1f} | | {100 * optimizer_ms / total:.1f}% |")
    print(f"| **total** | {sum(forward_ms.values()) / steps:.1f} | {sum(backward_ms.values()) / steps:.1f} | |")


def _in_backward(event) -> bool:
    parent = event
    while parent is not None:
        if parent.name.startswith("autograd::engine::evaluate_function"):
            return True
        parent = parent.cpu_parent
    return False


def flop_table(config, input_ids: torch.Tensor) -> None:
    """Training FLOPs (forward + backward, torch's FlopCounterMode: matmuls, convolutions, attention) of Zonkey
    and of the same-size byte GPT-2 on the same batch, and Zonkey's forward FLOPs per component."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_zonkey.evaluation.baseline import char_baseline

    torch.manual_seed(0)
    model = ZonkeyModel(config).train()
    baseline = char_baseline(sum(p.numel() for p in model.parameters()), context=input_ids.shape[1]).train()
    counts = {}
    for name, loss_of in (("Zonkey", lambda: model(input_ids, return_loss=True).loss),
                          ("baseline", lambda: baseline(input_ids=input_ids, labels=input_ids).loss)):
        counter = FlopCounterMode(display=False)
        with counter:
            loss_of().backward()
        counts[name] = counter.get_total_flops()
    counter = FlopCounterMode(display=False, depth=4)
    with counter:
        model(input_ids, return_loss=True)
    forward = counter.get_flop_counts()
    bytes_ = int((input_ids != config.pad_token_id).sum())
    print("\ntraining FLOPs per step (forward + backward):\n")
    print("| model | GFLOP / step | MFLOP / byte | vs baseline |")
    print("|---|---:|---:|---:|")
    for name, flops in counts.items():
        print(f"| {name} | {flops / 1e9:.1f} | {flops / bytes_ / 1e6:.1f} | {flops / counts['baseline']:.2f}x |")
    total = sum(forward["Global"].values())
    print("\nZonkey forward FLOPs by component (the decoder's three passes and the light pass's re-compression "
          "included):\n")
    print("| component | GFLOP | share |")
    print("|---|---:|---:|")
    for key in sorted(k for k in forward if k.count(".") == 3 and k.startswith("ZonkeyModel.levels.")):
        flops = sum(forward[key].values())
        print(f"| level {key.split('.')[2]} {key.split('.')[3]} | {flops / 1e9:.2f} | {100 * flops / total:.0f}% |")
    print(f"| total | {total / 1e9:.2f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configuration/zonkey-tiny.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=25, help="rows of the op table")
    parser.add_argument("--skip_flops", action="store_true", help="skip the FLOP table (Zonkey vs the baseline)")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace (JSON) here")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, JSON values (e.g. light_pass_fraction=0.5)")
    args = parser.parse_args()
    configure_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(config, key, json.loads(value))
    input_ids = make_batch(args.batch_size, config.document_length[0], 0)
    model = ZonkeyModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, eps=1e-7)
    label_functions()
    label_modules(model)
    labels = {f"L{i}.{p.split('.')[-1]}" for i in range(config.num_levels) for p in COMPONENTS}
    labels |= {f"L{i}.{m}" for i in range(config.num_levels)
               for m in ("loss_terms", "reconstruction", "diffusion_terms", "stitcher_terms")}
    labels |= set(FUNCTIONS) | {"embed", "force_boundaries"}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids, return_loss=True).loss
        loss.backward()
        with record_function("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    print(f"profile: {Path(args.config).stem}, {args.batch_size} x {config.document_length[0]} bytes, "
          f"threads {torch.get_num_threads()}, {args.steps} profiled steps after {args.warmup}; "
          f"torch {torch.__version__}")
    print(machine_line())
    print(f"median step under the profiler: {statistics.median(times):.3f} s")
    tables(prof, args.steps, labels)
    print(f"\ntop {args.ops} ops by self CPU time (ms per step):\n")
    print("| op | calls / step | self ms / step | share |")
    print("|---|---:|---:|---:|")
    averages = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)
    total = sum(a.self_cpu_time_total for a in averages)
    for a in averages[: args.ops]:
        print(f"| {a.key} | {a.count / args.steps:.0f} | {a.self_cpu_time_total / 1000 / args.steps:.1f} | "
              f"{100 * a.self_cpu_time_total / total:.1f}% |")
    if not args.skip_flops:
        flop_table(config, input_ids)
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"\ntrace written to {args.trace}")


if __name__ == "__main__":
    main()
