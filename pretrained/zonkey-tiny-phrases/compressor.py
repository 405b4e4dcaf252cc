"""Compressor: a segment's window -> one latent of C vectors, on the sphere of radius nu(C d).

C learned CLS vectors (existence 1) are prepended to the segment, a small residual Conv1d (k = 3) acts
on the inputs (x + LN(GELU(conv x)), as the reference; `conv_norm=False`: x + conv x, the first
checkpoint's), and a PA encoder reads the lot under the segment's existence. The C CLS outputs, flattened
to C * d, are projected onto the sphere. Levels >= 1 add a masked-vector prediction task that keeps the
latents informative (20% of the inputs masked: 80% mask vector / 10% random vector / 10% kept; InfoNCE).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .probabilistic_attention import PAEncoder
from .sphere import cosine_logits, full_precision, to_sphere


@dataclass
class CompressorOutput:
    latents: torch.Tensor  # (M, C * d), norm nu(C d)
    hidden_states: torch.Tensor | None  # (M, L, d) the encoder's outputs at the segment positions (None: latents_only)


class Compressor(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, num_cls: int, ffn_multiplier: int,
                 conv_norm: bool = True):
        super().__init__()
        self.num_cls = num_cls
        self.cls_vectors = nn.Parameter(torch.empty(num_cls, hidden_size))
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size=3, padding=1)
        self.conv_norm = nn.LayerNorm(hidden_size) if conv_norm else None
        self.encoder = PAEncoder(hidden_size, num_heads, num_layers, ffn_multiplier)

    def forward(self, windows: torch.Tensor, existence: torch.Tensor, latents_only: bool = False) -> CompressorOutput:
        """windows (M, L, d) segment vectors, existence (M, L) in [0, 1] -> CompressorOutput. latents_only: skip the
        segment positions' outputs (hidden_states None) and the last layer's work on them (generation)."""
        m = windows.shape[0]
        keep = (existence > 0).unsqueeze(-1).to(windows.dtype)  # positions that cannot exist feed nothing in
        local = self.conv((windows * keep).transpose(1, 2)).transpose(1, 2)
        if self.conv_norm is not None:
            local = self.conv_norm(F.gelu(local))
        x = windows + local * keep
        cls = self.cls_vectors.to(x.dtype).expand(m, -1, -1)
        ones = torch.ones(m, self.num_cls, dtype=existence.dtype, device=existence.device)
        h = self.encoder(torch.cat([cls, x], dim=1), torch.cat([ones, existence], dim=1),
                         self.num_cls if latents_only else None)
        segment_states = None if latents_only else h[:, self.num_cls :]
        return CompressorOutput(to_sphere(h[:, : self.num_cls].flatten(1)), segment_states)


def anti_collapse_loss(latents: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """|mean cosine| over pairs of latents from different documents. (M, D), (M,) -> scalar."""
    with full_precision(latents):
        return _anti_collapse_loss(latents, document)


def _anti_collapse_loss(latents: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(latents.float(), dim=-1)
    total = unit.sum(0)
    per_document = torch.zeros(len(unit), unit.shape[1], device=unit.device).index_add(0, document, unit)  # ids < M
    counts = torch.zeros(len(unit), device=unit.device).index_add(0, document, torch.ones_like(unit[:, 0]))
    pairs = counts.sum() ** 2 - (counts**2).sum()
    value = ((total @ total - (per_document**2).sum()) / pairs.clamp_min(1.0)).abs()
    return torch.where(pairs > 0, value, latents.sum() * 0.0)  # one document: no pairs (no host synchronisation)


class MaskedVectorHead(nn.Module):
    """Masked-vector prediction at levels >= 1: corrupt inputs, predict the originals from the compressor."""

    def __init__(self, hidden_size: int, mask_probability: float, num_negatives: int):
        super().__init__()
        self.mask_probability = mask_probability
        self.num_negatives = num_negatives
        self.mask_vector = nn.Parameter(torch.empty(hidden_size))
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, compressor: Compressor, windows: torch.Tensor, existence: torch.Tensor) -> torch.Tensor:
        """windows (M, L, d), existence (M, L) -> InfoNCE loss of the masked positions (scalar)."""
        real = existence > 0
        chosen = (torch.rand(real.shape, device=real.device) < self.mask_probability) & real
        if not chosen.any():
            return windows.sum() * 0.0
        action = torch.rand(real.shape, device=real.device)
        pool = windows[real]
        random_vectors = pool[torch.randint(len(pool), real.shape, device=real.device)]
        corrupted = torch.where((chosen & (action < 0.8)).unsqueeze(-1), to_sphere(self.mask_vector).to(windows.dtype),
                                windows)
        corrupted = torch.where((chosen & (action >= 0.8) & (action < 0.9)).unsqueeze(-1), random_vectors, corrupted)
        hidden = compressor(corrupted, existence).hidden_states
        prediction = self.proj(hidden[chosen])  # (Q, d)
        return info_nce(prediction, windows[chosen], pool, self.num_negatives)


def info_nce(prediction: torch.Tensor, target: torch.Tensor, pool: torch.Tensor, num_negatives: int | None,
             positive_cos: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row InfoNCE with 2 atanh(cos) logits against negatives from `pool`.

    prediction (Q, d), target (Q, d), pool (P, d) -> (Q,) losses. num_negatives: that many negatives drawn at
    random per row, or None for every pool vector (a (Q, P) cosine matrix). A negative equal to the positive (the
    target itself, or a duplicate of it: cosine above 1 - 1e-6) is masked out, so the positive is never its own
    negative.
    `positive_cos` (Q,) overrides cos(prediction, target). Computed in float32 under autocast.
    """
    with full_precision(prediction):
        return _info_nce(prediction, target, pool, num_negatives, positive_cos)


def _info_nce(prediction: torch.Tensor, target: torch.Tensor, pool: torch.Tensor, num_negatives: int | None,
              positive_cos: torch.Tensor | None) -> torch.Tensor:
    pred = F.normalize(prediction.float(), dim=-1)
    target_unit = F.normalize(target.float(), dim=-1)
    if positive_cos is None:
        positive_cos = (pred * target_unit).sum(-1)
    positive_cos = positive_cos.float()
    pool_unit = F.normalize(pool.float(), dim=-1)
    if num_negatives is None:
        negative_cos = pred @ pool_unit.T
        same = (target_unit @ pool_unit.T) > 1.0 - 1e-6
    else:  # the (Q, K) entries of the (Q, P) cosine matrix: no (Q, K, d) gather of the pool
        index = torch.randint(len(pool), (len(prediction), num_negatives), device=pool.device)
        negative_cos = (pred @ pool_unit.T).gather(1, index)
        with torch.no_grad():
            same = ((target_unit @ pool_unit.T) > 1.0 - 1e-6).gather(1, index)
    logits = torch.cat([cosine_logits(positive_cos).unsqueeze(1),
                        cosine_logits(negative_cos).masked_fill(same, float("-inf"))], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(prediction), dtype=torch.long, device=logits.device),
                           reduction="none")
