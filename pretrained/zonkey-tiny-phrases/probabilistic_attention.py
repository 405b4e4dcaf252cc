"""Probabilistic Attention (PA): attention over tokens that exist only with some probability.

Each key k carries an existence probability e_k in [0, 1]. The score of query q and key k is

    S_qk = Q_q . K_k / sqrt(d_h) + B_qk,   B_qk = min(0, log e_k - log e_q) for k > q, 0 for k <= q,

so a later key is down-weighted by P(k exists | q exists) = e_k / e_q. Keys with e_k = 0 are masked
hard and query rows with e_q = 0 give zeros. With sharp existence PA is key-padding masking; with soft
existence it is a differentiable length mask. B goes to torch's scaled_dot_product_attention as a float
mask. Sinusoidal position codes are added to Q and K (not to the inputs); the attention output is gated
per head by sigmoid(W_g x). Blocks are pre-LN with a GELU FFN.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .sphere import sinusoid

NEG_INF = float("-inf")


def existence_bias(
    query_existence: torch.Tensor,
    key_existence: torch.Tensor,
    query_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The PA bias B. (B, Lq), (B, Lk) -> (B, 1, Lq, Lk) float.

    Positions default to 0..L-1; a cross-attention passes the keys' positions in the query's frame.
    """
    batch, lq = query_existence.shape
    lk = key_existence.shape[1]
    device = query_existence.device
    if query_positions is None and key_positions is None:
        later = torch.ones(lq, lk, dtype=torch.bool, device=device).triu_(1)  # (Lq, Lk), shared by the batch
    else:
        if query_positions is None:
            query_positions = torch.arange(lq, device=device).expand(batch, lq)
        if key_positions is None:
            key_positions = torch.arange(lk, device=device).expand(batch, lk)
        later = key_positions[:, None, :] > query_positions[:, :, None]
    log_q = torch.log(query_existence.float().clamp_min(eps))
    log_k = torch.log(key_existence.float().clamp_min(eps))
    diff = log_k[:, None, :] - log_q[:, :, None]
    key_dead = (key_existence <= 0)[:, None, :]
    query_dead = (query_existence <= 0)[:, :, None]
    # Constant part: -inf for keys that do not exist; a query that does not exist attends to its first key
    # only (its output is zeroed afterwards): no NaN rows.
    neg_inf = torch.full((), NEG_INF, dtype=diff.dtype, device=device)
    dead_row = torch.full((lk,), NEG_INF, dtype=diff.dtype, device=device)
    dead_row[:1] = 0.0
    fill = torch.where(query_dead, dead_row, torch.where(key_dead, neg_inf, torch.zeros_like(neg_inf)))
    # One differentiable select (cheap backward): min(0, diff) on later keys, where "<= 0" keeps the gradient
    # of clamp_max at ties (diff == 0), exactly as (diff).clamp_max(0) would.
    active = later & (diff <= 0) & ~key_dead & ~query_dead
    return torch.where(active, diff, fill).unsqueeze(1)


@dataclass
class AttentionOutput:
    hidden_states: torch.Tensor  # (B, Lq, d)
    attention_weights: torch.Tensor | None = None  # (B, H, Lq, Lk) when asked for


class ProbabilisticAttention(nn.Module):
    """Multi-head PA, self or cross. The bias comes precomputed from `existence_bias`."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.gate_proj = nn.Linear(hidden_size, num_heads)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        bias: torch.Tensor | None,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        return_weights: bool = False,
    ) -> AttentionOutput:
        """query_states (B, Lq, d), key_states (B, Lk, d), bias (B, 1, Lq, Lk), positions (B, Lq) / (B, Lk).

        bias: the PA existence bias (float), or a boolean mask (True = attend) for hard masking, the
        comparison point of the paper's check 1."""
        dtype = query_states.dtype
        q = self._heads(self.q_proj(query_states) + self._codes(query_positions, dtype))
        k = self._heads(self.k_proj(key_states) + self._codes(key_positions, dtype))
        v = self._heads(self.v_proj(key_states))
        mask = None if bias is None else bias if bias.dtype == torch.bool else bias.to(dtype)
        weights = None
        if return_weights:
            scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        gate = torch.sigmoid(self.gate_proj(query_states)).transpose(1, 2).unsqueeze(-1)  # (B, H, Lq, 1)
        out = (out * gate).transpose(1, 2).flatten(2)
        return AttentionOutput(self.o_proj(out), weights)

    def _codes(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return sinusoid(positions, self.head_dim).to(dtype).repeat(*([1] * positions.dim()), self.num_heads)


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, multiplier: int):
        super().__init__()
        self.up = nn.Linear(hidden_size, multiplier * hidden_size)
        self.down = nn.Linear(multiplier * hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class PABlock(GradientCheckpointingLayer):
    """Pre-LN block: x + PA(LN x), then x + FFN(LN x); optionally a cross-attention in between."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_multiplier: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.attn = ProbabilisticAttention(hidden_size, num_heads)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, ffn_multiplier)

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor,
                outputs: int | None = None) -> torch.Tensor:
        """hidden_states (B, L, d), bias (B, 1, L, L) or None, positions (B, L) -> (B, L, d), or only the first
        `outputs` positions' rows (B, outputs, d) (every position is still attended to)."""
        h = self.attn_norm(hidden_states)
        if outputs is not None:
            hidden_states, bias = hidden_states[:, :outputs], None if bias is None else bias[:, :, :outputs]
        hidden_states = hidden_states + self.attn(h[:, : hidden_states.shape[1]], h, bias,
                                                  positions[:, : hidden_states.shape[1]], positions).hidden_states
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


class PAEncoder(nn.Module):
    """A stack of PA blocks with a final LayerNorm; rows of non-existing queries come out as zeros."""

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, ffn_multiplier: int):
        super().__init__()
        self.layers = nn.ModuleList(PABlock(hidden_size, num_heads, ffn_multiplier) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, hidden_states: torch.Tensor, existence: torch.Tensor | None = None,
                outputs: int | None = None) -> torch.Tensor:
        """hidden_states (B, L, d), existence (B, L) in [0, 1] (None: everything exists) -> (B, L, d).
        outputs: return only the first `outputs` positions (B, outputs, d): the last layer computes its queries
        and FFN for those rows only (the compressor's CLS vectors in generation), with the same result."""
        batch, length, _ = hidden_states.shape
        positions = torch.arange(length, device=hidden_states.device).expand(batch, length)
        bias = None if existence is None else existence_bias(existence, existence)
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, bias, positions, outputs if index == len(self.layers) - 1 else None)
        hidden_states = self.norm(hidden_states)
        if existence is not None:
            alive = (existence[:, : hidden_states.shape[1]] > 0).unsqueeze(-1)
            hidden_states = hidden_states * alive.to(hidden_states.dtype)
        return hidden_states
