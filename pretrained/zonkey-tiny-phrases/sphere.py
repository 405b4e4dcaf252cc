"""Vectors on spheres: every level-l sequence vector has norm nu(d_l), every latent nu(C_l d_l)."""

import math

import torch


def expected_norm(n: int) -> float:
    """nu(n) = sqrt(2) Gamma((n+1)/2) / Gamma(n/2): the expected norm of an n-dim standard normal."""
    return math.sqrt(2.0) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))


def to_sphere(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Project the last dimension of `x` onto the sphere of radius nu(x.shape[-1])."""
    return torch.nn.functional.normalize(x, dim=-1, eps=eps) * expected_norm(x.shape[-1])


def cosine_logits(cos: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Logits 2 * atanh(cos), with cos clipped to (-1 + eps, 1 - eps), in float32: in bfloat16 the bound 1 - 1e-4
    rounds to 1 and atanh returns inf."""
    return 2.0 * torch.atanh(cos.float().clamp(-1.0 + eps, 1.0 - eps))


def full_precision(reference: torch.Tensor) -> torch.autocast:
    """A context in which autocast is off on `reference`'s device: the losses' cosines, logits and sums run in
    float32 under mixed precision (bfloat16 cosines have a resolution of ~0.004 near 1)."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal codes of (possibly fractional) positions. (...,) -> (..., dim), dim even."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
