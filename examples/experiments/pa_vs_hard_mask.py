#!/usr/bin/env python
"""The paper's check 1: Probabilistic Attention with sharp existence reproduces hard masking.

For random segments (lengths drawn per row) the same ProbabilisticAttention module runs twice: with the PA
existence bias built from e in {0, 1}, and with a boolean key-padding mask (True on real keys). Printed:
the largest absolute difference of outputs and attention weights at real query positions. Then the same
with nearly sharp existence (1 - eps / eps), where PA should approach hard masking as eps -> 0, and with
the splitter's kind of soft existence, where it differs by design. Speed: benchmarks/bench_probabilistic_attention.py.

    python examples/experiments/pa_vs_hard_mask.py
"""

import torch

from modeling_zonkey.probabilistic_attention import ProbabilisticAttention, existence_bias


def run(module, x, e, keep, positions):
    soft = module(x, x, existence_bias(e, e, positions, positions), positions, positions, return_weights=True)
    hard = module(x, x, keep[:, None, None, :], positions, positions, return_weights=True)
    real = keep  # compare at real query positions (padding queries attend to nothing in the hard version)
    out = (soft.hidden_states - hard.hidden_states)[real].abs().max().item()
    weights = (soft.attention_weights - hard.attention_weights).permute(0, 2, 1, 3)[real].abs().max().item()
    return out, weights


def main() -> None:
    torch.manual_seed(0)
    print("| segments x L | width / heads | existence | max output diff | max weight diff |")
    print("|---|---|---|---:|---:|")
    for segments, length, width, heads in ((64, 12, 64, 4), (256, 27, 256, 8), (32, 32, 128, 8)):
        module = ProbabilisticAttention(width, heads).eval()
        x = torch.randn(segments, length, width)
        positions = torch.arange(length).expand(segments, length)
        lengths = torch.randint(1, length + 1, (segments,))
        keep = torch.arange(length) < lengths[:, None]
        with torch.no_grad():
            for name, e in (("sharp {0, 1}", keep.float()),
                            ("1 - 1e-3 / 1e-3", keep.float() * (1 - 2e-3) + 1e-3),
                            ("1 - 1e-6 / 1e-6", keep.float() * (1 - 2e-6) + 1e-6),
                            ("soft survival (splitter-like)",
                             torch.cumprod(torch.cat([torch.ones(segments, 1),
                                                      1 - 0.2 * torch.rand(segments, length - 1)], 1), 1) * keep)):
                out, weights = run(module, x, e, keep, positions)
                print(f"| {segments} x {length} | {width} / {heads} | {name} | {out:.2e} | {weights:.2e} |")


if __name__ == "__main__":
    main()
