"""Benchmark: Probabilistic Attention (PA) vs hard key-padding masking, forward + backward.

Two comparisons at the same shapes (default 256 segments x 32 positions x width 256, 8 heads):

  (a) module: ProbabilisticAttention with the PA float bias (existence_bias computed inside the timed
      region) vs the very same module weights run with a boolean key-padding mask given to SDPA.
  (b) kernel: scaled_dot_product_attention(q, k, v, attn_mask=existence_bias(e, e)) vs
      scaled_dot_product_attention(q, k, v, attn_mask=bool key-padding mask), q/k/v leaf tensors.

Existence is soft, as in the model: e_0 = 1, e_j = prod_{k<=j} (1 - p_k), and 0 past a random
segment length (so the bias has -inf keys and dead query rows). Each comparison runs twice: with the
existence requiring grad, as in training (the splitter's existence is differentiable, so SDPA has to
give a gradient for its float mask, which sends it to the math backend on CPU), and with a constant
existence (SDPA keeps its fused flash kernel). The hard mask is `e > 0` broadcast as (B, 1, 1, L).

The two variants are interleaved (alternating which goes first) so both see the same machine state;
the table reports the median time of each and the PA / hard ratio (ratio of medians and median of the
per-repeat paired ratios). The stated target is PA / hard <= 1.2x.

On a shared machine whose cores are busy, run with --threads 1 or with OMP_WAIT_POLICY=PASSIVE in the
environment: with the default (spinning) OpenMP wait policy a 2-thread step can be 10-30x slower when
another process holds a core. The header prints the load average and the policy in force.

    python benchmarks/bench_probabilistic_attention.py
    python benchmarks/bench_probabilistic_attention.py --segments 64 --length 32 --hidden 256 --heads 8 --repeats 50
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_line  # benchmarks/common.py (scripts run from this folder's path)

from modeling_zonkey.probabilistic_attention import ProbabilisticAttention, existence_bias

TARGET = 1.2


def make_existence(segments: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(M, L) soft existence: cumulative survival of random end probabilities, 0 past a random length."""
    p_end = torch.rand(segments, length - 1, generator=generator) * 0.2
    survive = torch.cumprod(1.0 - p_end, dim=1)
    e = torch.cat([torch.ones(segments, 1), survive], dim=1)
    lengths = torch.randint(1, length + 1, (segments,), generator=generator)
    return e * (torch.arange(length) < lengths[:, None])


def hard_module_forward(module: ProbabilisticAttention, x: torch.Tensor, mask: torch.Tensor,
                        positions: torch.Tensor) -> torch.Tensor:
    """ProbabilisticAttention.forward (self-attention) with a boolean attn_mask instead of the PA bias."""
    dtype = x.dtype
    codes = module._codes(positions, dtype)
    q = module._heads(module.q_proj(x) + codes)
    k = module._heads(module.k_proj(x) + codes)
    v = module._heads(module.v_proj(x))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    gate = torch.sigmoid(module.gate_proj(x)).transpose(1, 2).unsqueeze(-1)
    out = (out * gate).transpose(1, 2).flatten(2)
    return module.o_proj(out)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def compare(name: str, pa_step, hard_step, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        pa_step()
        hard_step()
    pa_ms, hard_ms = [], []
    for i in range(repeats):
        if i % 2 == 0:
            pa_ms.append(timed(pa_step))
            hard_ms.append(timed(hard_step))
        else:
            hard_ms.append(timed(hard_step))
            pa_ms.append(timed(pa_step))
    pa_med, hard_med = statistics.median(pa_ms), statistics.median(hard_ms)
    paired = statistics.median(p / h for p, h in zip(pa_ms, hard_ms))
    return {"name": name, "pa": pa_med, "hard": hard_med, "ratio": pa_med / hard_med, "paired": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=256, help="batch of segments M")
    parser.add_argument("--length", type=int, default=32, help="positions per segment L")
    parser.add_argument("--hidden", type=int, default=256, help="width d")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--existence_grad", choices=("both", "yes", "no"), default="both",
                        help="time with existence requiring grad (training: the splitter's existence is "
                             "differentiable), with a constant existence, or both (default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    M, L, d, H = args.segments, args.length, args.hidden, args.heads
    dh = d // H

    existence = make_existence(M, L, gen)
    hard_mask = (existence > 0)[:, None, None, :]  # (M, 1, 1, L) key padding
    positions = torch.arange(L).expand(M, L)
    module = ProbabilisticAttention(d, H)
    x = torch.randn(M, L, d, generator=gen).requires_grad_(True)
    grad_out = torch.randn(M, L, d, generator=gen)
    q, k, v = (torch.randn(M, H, L, dh, generator=gen).requires_grad_(True) for _ in range(3))
    grad_attn = torch.randn(M, H, L, dh, generator=gen)
    grad_bias = torch.randn(M, 1, L, L, generator=gen)

    def steps(e: torch.Tensor):
        def zero():
            for t in (x, e, q, k, v):
                t.grad = None
            module.zero_grad(set_to_none=True)

        def module_pa():
            zero()
            bias = existence_bias(e, e)
            module(x, x, bias, positions, positions).hidden_states.backward(grad_out)

        def module_hard():
            zero()
            hard_module_forward(module, x, hard_mask, positions).backward(grad_out)

        def kernel_pa():
            zero()
            F.scaled_dot_product_attention(q, k, v, attn_mask=existence_bias(e, e)).backward(grad_attn)

        def kernel_hard():
            zero()
            F.scaled_dot_product_attention(q, k, v, attn_mask=hard_mask).backward(grad_attn)

        return module_pa, module_hard, kernel_pa, kernel_hard

    rows, bias_rows = [], []
    grads = {"both": (True, False), "yes": (True,), "no": (False,)}[args.existence_grad]
    for requires_grad in grads:
        e = existence.clone().requires_grad_(requires_grad)
        tag = "existence requires grad" if requires_grad else "existence constant"
        module_pa, module_hard, kernel_pa, kernel_hard = steps(e)
        rows.append(compare(f"(a) PA module, {tag}", module_pa, module_hard, args.warmup, args.repeats))
        rows.append(compare(f"(b) SDPA kernel, {tag}", kernel_pa, kernel_hard, args.warmup, args.repeats))

    def bias_forward():
        with torch.no_grad():
            existence_bias(existence, existence)

    e_grad = existence.clone().requires_grad_(True)

    def bias_backward():
        e_grad.grad = None
        existence_bias(e_grad, e_grad).backward(grad_bias)

    for name, fn in (("forward (no grad)", bias_forward), ("forward + backward", bias_backward)):
        for _ in range(args.warmup):
            fn()
        bias_rows.append((name, statistics.median(timed(fn) for _ in range(max(args.repeats, 50)))))

    print(f"shapes: {M} segments x {L} positions x width {d}, {H} heads (head dim {dh}); "
          f"threads {torch.get_num_threads()}; warmup {args.warmup}, repeats {args.repeats}; torch {torch.__version__}")
    print(machine_line())
    print()
    print("| fwd+bwd path | PA median ms | hard-mask median ms | PA/hard (medians) | PA/hard (paired median) "
          "| <= 1.2x |")
    print("|---|---:|---:|---:|---:|:---:|")
    for r in rows:
        ok = "yes" if r["ratio"] <= TARGET else "NO"
        print(f"| {r['name']} | {r['pa']:.2f} | {r['hard']:.2f} | {r['ratio']:.2f}x | {r['paired']:.2f}x | {ok} |")
    print()
    print(f"| existence_bias alone ({M} x {L} x {L}) | median ms |")
    print("|---|---:|")
    for name, ms in bias_rows:
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
