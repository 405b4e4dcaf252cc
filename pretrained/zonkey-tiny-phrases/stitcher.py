"""Stitcher: reassembles consecutive decoded segments (seq1 = segment i, seq2 = segment i + 1).

Offset inference (where does seq2 start inside seq1's window?):
    prior    pi(n) = max(0, e1_{n-1} - e1_n) for n = 1..L-1, pi(L) = e1_{L-1}     (from seq1's existence)
    content  m(n) = mean_{j<4} cos(P2 seq2_j, P1 seq1_{n+j})                    (projections to d/4)
    q(n) = softmax(log pi(n) + phi(alpha) m(n)),  phi(x) = ELU(x - 1) + 1,  alpha learned (init 1)
    n_hat = (1 - e1_{L-1}) sum_n n q(n) + e1_{L-1} L                            (differentiable)
Refiner: seq1' = normalize(seq1 + rho * PA-cross-attention(seq1 <- seq2)), rho learned (init 0.1), with
seq2's positions taken relative to seq1 (seq2_j sits at offset gap + j) [ours; the reference compared
absolute indices]. Assembly keeps seq1'[:gap] of every segment, then the last segment up to where its
existence falls below the cutoff.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter

from .probabilistic_attention import ProbabilisticAttention, existence_bias
from .sphere import full_precision, to_sphere

MATCH_POSITIONS = 4


class AtLeastOneDim(ConversionOps):
    """Checkpoint conversion (transformers' weight-conversion mechanism): checkpoints written before alpha and rho
    became shape (1,) store them as 0-dim tensors; they load as (1,)."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        return {target_patterns[0]: tensor.reshape(1) if tensor.dim() == 0 else tensor}

    @property
    def reverse_op(self) -> ConversionOps:
        return AtLeastOneDim()  # saving writes the (1,) shape


register_checkpoint_conversion_mapping("zonkey", [
    WeightConverter(source_patterns=rf"stitcher\.{name}", target_patterns=f"stitcher.{name}",
                    operations=[AtLeastOneDim()])
    for name in ("alpha", "rho")], overwrite=True)


@dataclass
class OffsetOutput:
    n_hat: torch.Tensor  # (P,) inferred offset of seq2 in seq1, in [1, L]
    offset_probs: torch.Tensor  # (P, L) q(n) for n = 1..L


class Stitcher(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, window_length: int):
        super().__init__()
        self.window_length = window_length
        self.proj1 = nn.Linear(hidden_size, hidden_size // 4)
        self.proj2 = nn.Linear(hidden_size, hidden_size // 4)
        self.alpha = nn.Parameter(torch.empty(1))  # (1,), not a 0-dim scalar: FSDP2 cannot shard 0-dim parameters
        self.refiner_norm = nn.LayerNorm(hidden_size)
        self.refiner = ProbabilisticAttention(hidden_size, num_heads)
        self.rho = nn.Parameter(torch.empty(1))

    def infer_offset(self, seq1: torch.Tensor, e1: torch.Tensor, seq2: torch.Tensor) -> OffsetOutput:
        """seq1 (P, L, d), e1 (P, L) seq1's existence, seq2 (P, L, d) -> OffsetOutput."""
        length = self.window_length
        prior = torch.cat([(e1[:, :-1] - e1[:, 1:]).clamp_min(0.0), e1[:, -1:]], dim=1)  # pi(1..L)
        # eps bounds the gradient where a window is empty (zero vectors past the document's end)
        a1 = F.normalize(self.proj1(seq1).float(), dim=-1, eps=1e-3)
        a2 = F.normalize(self.proj2(seq2[:, :MATCH_POSITIONS]).float(), dim=-1, eps=1e-3)
        with full_precision(a1):
            sims = a2 @ a1.transpose(1, 2)  # (P, 4, L): cos(seq2_j, seq1_i)
        total = torch.zeros_like(prior)
        count = torch.zeros(length, device=prior.device)
        for j in range(min(MATCH_POSITIONS, sims.shape[1])):
            # offset n (index n - 1) pairs seq2_j with seq1_{n+j}
            shifted = sims[:, j, 1 + j :]
            total[:, : shifted.shape[1]] += shifted
            count[: shifted.shape[1]] += 1
        match = total / count.clamp_min(1)
        strength = F.elu(self.alpha - 1.0) + 1.0
        q = torch.softmax(torch.log(prior.clamp_min(1e-8)) + strength * match, dim=-1)
        n = torch.arange(1, length + 1, device=q.device, dtype=q.dtype)
        n_soft = (q * n).sum(-1)
        tail = e1[:, -1].float()
        return OffsetOutput((1 - tail) * n_soft + tail * length, q)

    def refine(self, seq1: torch.Tensor, e1: torch.Tensor, seq2: torch.Tensor, e2: torch.Tensor,
               gap: torch.Tensor) -> torch.Tensor:
        """seq1' = normalize(seq1 + rho * PA-cross(seq1 <- seq2)); seq2_j at offset gap + j. -> (P, L, d)."""
        pairs, length = e1.shape
        own = torch.arange(length, device=seq1.device).expand(pairs, length)
        shifted = own + gap[:, None]
        bias = existence_bias(e1, e2, own, shifted)
        h1, h2 = self.refiner_norm(seq1), self.refiner_norm(seq2)
        update = self.refiner(h1, h2, bias, own, shifted).hidden_states
        return to_sphere(seq1 + self.rho.to(seq1.dtype) * update)

    def assemble(self, segments: torch.Tensor, existence: torch.Tensor, gaps: torch.Tensor | None = None,
                 cutoff: float = 0.5, refine: bool = True) -> torch.Tensor:
        """One document's decoded segments (K, L, d), existence (K, L) -> its sequence (N', d).

        gaps: the offset of each next segment (K - 1,), optionally followed by the last segment's length
        (K,); None infers the offsets (round(n_hat)). Without a given length the last segment is kept up to
        where its existence falls to the cutoff.
        """
        return torch.cat(self.pieces(segments, existence, gaps, cutoff, refine), dim=0)

    def pieces(self, segments: torch.Tensor, existence: torch.Tensor, gaps: torch.Tensor | None = None,
               cutoff: float = 0.5, refine: bool = True) -> list[torch.Tensor]:
        """`assemble` before the concatenation: what each of the K segments contributes, K tensors (n_k, d).
        Piece k depends on segments k and k + 1 only (the last on itself), so a document decoded in parts that
        overlap by one segment gives the same pieces (generate(max_new_tokens=...) relies on this)."""
        count = segments.shape[0]
        if gaps is not None and len(gaps) == count:
            gaps, last_keep = gaps[:-1], int(gaps[-1])
        else:
            last_keep = int((existence[-1] > cutoff).long().cumprod(0).sum().clamp_min(1))
        if count == 1:
            return [segments[0, :last_keep]]
        seq1, e1, seq2, e2 = segments[:-1], existence[:-1], segments[1:], existence[1:]
        if gaps is None:
            gaps = self.infer_offset(seq1, e1, seq2).n_hat.round().long().clamp(1, self.window_length)
        if refine:
            seq1 = self.refine(seq1, e1, seq2, e2, gaps)
        return [seq1[i, : int(gaps[i])] for i in range(count - 1)] + [segments[-1, :last_keep]]


def position_loss(n_hat: torch.Tensor, gap: torch.Tensor, in_document: torch.Tensor) -> torch.Tensor:
    """Mass of real characters between the true cut and n_hat (each real character has mass 1).

    n_hat (P,), gap (P,), in_document (P, L) of seq1's window -> (P,) losses (linear between positions).
    """
    mass = F.pad(in_document.float().cumsum(dim=1), (1, 0))  # mass[x] = real characters before offset x

    def cumulative(x: torch.Tensor) -> torch.Tensor:
        low = x.detach().floor().long().clamp(0, mass.shape[1] - 2)
        frac = x - low
        left = mass.gather(1, low[:, None]).squeeze(1)
        right = mass.gather(1, (low + 1)[:, None]).squeeze(1)
        return left + frac * (right - left)

    return (cumulative(n_hat) - cumulative(gap.to(n_hat.dtype))).abs()
