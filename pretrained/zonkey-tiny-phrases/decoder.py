"""Decoder (decompressor + denoiser): a noised latent z_t and its time t -> the segment's L vectors.

It predicts data, not noise:
    prompt  = [tau(t); z_t split into its C vectors, each + tau(t) (+ W s_i)]  (C + 1 tokens of width d)
              s: the previous clean-latent estimate, split the same way (self-conditioning, optional; W starts at 0)
    decompressor: a causal transformer that emits L vectors autoregressively (each step reads the
                  previous output, with a key/value cache)
    existence head: p_end = sigmoid(w . y / sqrt(d) - 2); e_hat_j = prod_{k=1..j}(1 - p_end_k), e_hat_0 = 1
                  (in log space: log(1 - p_end) = -softplus(logit))
    denoiser: a PA encoder over prompt + those L vectors under the existence [1 x (C + 1), e_draft], e_draft the
              existence head applied to the decompressor's vectors (so the predicted length masks the decoding);
              the last L outputs, normalised to nu(d), are X_hat, and e_hat is the head applied to them
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .probabilistic_attention import FeedForward, PAEncoder
from .sphere import sinusoid, to_sphere


@dataclass
class DecoderOutput:
    sequence: torch.Tensor  # (M, L, d) X_hat on the sphere of radius nu(d)
    existence: torch.Tensor  # (M, L) e_hat, the segment's soft length


class TimeEmbedding(nn.Module):
    """tau(t): (1 - t) tau_clean + t tau_noisy ("interpolate"), or a sinusoidal code + MLP ("sinusoidal")."""

    def __init__(self, hidden_size: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "interpolate":
            self.clean = nn.Parameter(torch.empty(hidden_size))
            self.noisy = nn.Parameter(torch.empty(hidden_size))
        else:
            self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                     nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (M,) in [0, 1] -> (M, d)."""
        if self.kind == "interpolate":
            return (1 - t)[:, None] * self.clean + t[:, None] * self.noisy
        return self.mlp(sinusoid(t * 1000.0, self.mlp[0].in_features).to(self.mlp[0].weight.dtype))


class SelfCondition(nn.Module):
    """W s: the previous clean-latent estimate's C vectors (M, C, d) -> what they add to the prompt (M, C, d).
    W is initialised to zero (`_init_weights`), so a decoder given this input starts as the one without it."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size, hidden_size))  # a parameter, not an nn.Linear, so that
        # transformers' initialisation (which skips a tensor it has already initialised) cannot overwrite the zeros

    def forward(self, estimate: torch.Tensor) -> torch.Tensor:
        return F.linear(estimate, self.weight)


class CausalBlock(GradientCheckpointingLayer):
    """Pre-LN causal self-attention block with a key/value cache (the decompressor's layer). Under
    `gradient_checkpointing_enable()` each call is recomputed in the backward pass instead of storing its activations
    (the cache of earlier positions is a positional input, so it is kept, read again on the replay, never rewritten)."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_multiplier: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, ffn_multiplier)

    def forward(self, x: torch.Tensor, start: int, cache: list[torch.Tensor] | None,
                codes: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (M, T, d) at positions start..start+T-1; cache [k, v] of the earlier positions, or None. codes: the
        sinusoidal codes (>= start + T, head_dim) of positions 0, 1, ... (default: computed here)."""
        h = self.attn_norm(x)
        if codes is None:
            codes = sinusoid(torch.arange(start + x.shape[1], device=x.device), self.head_dim)
        codes = codes[start : start + x.shape[1]].to(x.dtype)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for t in self.qkv(h).chunk(3, dim=-1))
        q, k = q + codes, k + codes
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and x.shape[1] > 1)
        x = x + self.o_proj(out.transpose(1, 2).flatten(2))
        return x + self.ffn(self.ffn_norm(x)), [k, v]


class Decompressor(nn.Module):
    """Emits L continuous vectors autoregressively from the prompt (KV cache)."""

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, window_length: int, ffn_multiplier: int):
        super().__init__()
        self.window_length = window_length
        self.layers = nn.ModuleList(CausalBlock(hidden_size, num_heads, ffn_multiplier) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        """prompt (M, P, d) -> (M, L, d)."""
        caches: list = [None] * len(self.layers)
        x, start, outputs = prompt, 0, []
        head_dim = self.layers[0].head_dim
        codes = sinusoid(torch.arange(prompt.shape[1] + self.window_length, device=prompt.device), head_dim)
        for _ in range(self.window_length):
            for i, layer in enumerate(self.layers):
                x, caches[i] = layer(x, start, caches[i], codes)
            start += x.shape[1]
            x = self.norm(x[:, -1:])
            outputs.append(x)
        return torch.cat(outputs, dim=1)


class Decoder(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_cls: int, window_length: int,
                 decompressor_layers: int, denoiser_layers: int, ffn_multiplier: int, time_embedding: str,
                 denoiser_existence: bool = True, self_conditioning: bool = False):
        super().__init__()
        self.num_cls = num_cls
        self.denoiser_existence = denoiser_existence
        self.window_length = window_length
        self.time = TimeEmbedding(hidden_size, time_embedding)
        self.decompressor = Decompressor(hidden_size, num_heads, decompressor_layers, window_length, ffn_multiplier)
        self.denoiser = PAEncoder(hidden_size, num_heads, denoiser_layers, ffn_multiplier)
        self.existence_head = nn.Linear(hidden_size, 1, bias=False)
        self.self_condition = SelfCondition(hidden_size) if self_conditioning else None

    @property
    def self_conditioning(self) -> bool:
        return self.self_condition is not None

    def forward(self, noised_latents: torch.Tensor, t: torch.Tensor,
                self_condition: torch.Tensor | None = None) -> DecoderOutput:
        """noised_latents (M, C * d), t (M,) -> DecoderOutput with (M, L, d) and (M, L). self_condition (M, C * d):
        the previous estimate of the clean latent (None: no estimate yet, the same as zeros)."""
        tau = self.time(t.to(noised_latents.dtype)).to(noised_latents.dtype).unsqueeze(1)  # (M, 1, d)
        latents = noised_latents.unflatten(1, (self.num_cls, -1))
        if self_condition is not None:
            if self.self_condition is None:
                raise ValueError("this decoder was built without self_conditioning: pass no self_condition.")
            latents = latents + self.self_condition(self_condition.to(latents.dtype).unflatten(1, (self.num_cls, -1)))
        prompt = torch.cat([tau, latents + tau], dim=1)
        emitted = self.decompressor(prompt)
        existence = None
        if self.denoiser_existence:  # the prompt always exists; the draft length masks the emitted vectors
            draft = self.existence(emitted).clamp_min(1e-6).to(prompt.dtype)
            existence = torch.cat([torch.ones_like(draft[:, :1]).expand(-1, prompt.shape[1]), draft], dim=1)
        y = self.denoiser(torch.cat([prompt, emitted], dim=1), existence)[:, -self.window_length :]
        return DecoderOutput(to_sphere(y), self.existence(y))

    def existence(self, vectors: torch.Tensor) -> torch.Tensor:
        """e_hat_j = prod_{k=1..j}(1 - p_end_k), e_hat_0 = 1, p_end = sigmoid(w . y / sqrt(d) - 2).
        (M, L, d) -> (M, L)."""
        logits = self.existence_head(vectors).squeeze(-1).float() / math.sqrt(vectors.shape[-1]) - 2.0
        log_survive = (-F.softplus(logits[:, 1:])).cumsum(dim=1)
        return torch.cat([torch.ones_like(logits[:, :1]), log_survive.exp()], dim=1)
