"""DDMM: noise on the sphere, noise levels, and the mixed-step objective's positive.

Forward noise:  z_t = nu(D) * normalize(sqrt(t) eps + sqrt(1 - t) z), t in [0, 1]; t = 1 is pure noise.
Mixed-step objective (three decoder passes, wired in `level.py`): clean (t0 small) -> heavy (t1 ~ U(0,1))
-> light (t2 small). The light pass's output X3 should land on the segment between the previous estimate
X2 and the clean target X: positive = max over lambda in {0, 1, lambda*} of cos(X3, X2 + lambda (X - X2)),
lambda* the closed-form maximiser clipped to [0, 1]. "When the text is identifiable, leap to it; when
not, take a small step along the path."
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .sphere import to_sphere


def add_noise(latents: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Noise latents on their sphere. latents (M, D), t (M,), noise (M, D) eps (default: drawn) -> (M, D),
    norm nu(D)."""
    eps = noise if noise is not None else torch.randn(latents.shape, generator=generator, device=latents.device,
                                                      dtype=latents.dtype)
    t = t.to(latents.dtype)[:, None]
    return to_sphere(t.sqrt() * eps + (1 - t).sqrt() * latents)


def deterministic_step(z: torch.Tensor, estimate: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One deterministic x0-prediction step on the sphere (DDIM): z_t (M, D) at t (M,) and the clean-latent estimate
    (M, D) -> z at t_next (M,), the estimate re-noised with the noise z_t implies, eps_hat = (z_t - sqrt(1 - t) z0) /
    sqrt(t); what the starting noise decided is kept. t is floored at 1e-4 (eps_hat is undefined at t = 0)."""
    return add_noise(estimate.float(), t_next, noise=implied_noise(z, estimate, t)).to(z.dtype)


def implied_noise(z: torch.Tensor, estimate: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_hat = (z_t - sqrt(1 - t) z0) / sqrt(t): the noise z_t (M, D) implies given the estimate z0 (M, D), t (M,),
    in float32 (bfloat16 would round t by up to ~1e-3). t is floored at 1e-4."""
    t = t.float().clamp_min(1e-4)[:, None]
    return (z.float() - (1 - t).sqrt() * estimate.float()) / t.sqrt()


def light_noise_levels(count: int, scale: float, device: torch.device) -> torch.Tensor:
    """t ~ scale * Beta(1, 3) / 0.25 (mean `scale`), the clean and light passes' small noise. -> (count,)"""
    beta = torch.distributions.Beta(torch.tensor(1.0, device=device), torch.tensor(3.0, device=device))
    return (scale * beta.sample((count,)) / 0.25).clamp(0.0, 1.0)


@dataclass
class PathPositive:
    cosine: torch.Tensor  # (...,) max over lambda in {0, 1, lambda*} of cos(X3, X2 + lambda (X - X2))
    lam: torch.Tensor  # (...,) the lambda that attains it


def path_positive(x3: torch.Tensor, x2: torch.Tensor, x: torch.Tensor) -> PathPositive:
    """The DDMM positive of each vector. x3, x2, x (..., d) -> PathPositive with (...,) fields.

    With a = X3, b = X2, c = X - X2, cos(a, b + lambda c) is maximised at
    lambda* = ((a.c)(b.b) - (a.b)(b.c)) / ((a.b)(c.c) - (a.c)(b.c)), clipped to [0, 1].
    """
    a, b = x3.float(), x2.float()
    c = x.float() - b
    ab, ac, bb, bc, cc = ((u * v).sum(-1) for u, v in ((a, b), (a, c), (b, b), (b, c), (c, c)))
    denominator = ab * cc - ac * bc
    safe = denominator.abs() > 1e-12
    star = torch.where(safe, (ac * bb - ab * bc) / torch.where(safe, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(ab))
    candidates = torch.stack([torch.zeros_like(ab), torch.ones_like(ab), star.clamp(0.0, 1.0)], dim=-1)  # (..., 3)
    points = b.unsqueeze(-2) + candidates.unsqueeze(-1) * c.unsqueeze(-2)  # (..., 3, d)
    cos = F.cosine_similarity(a.unsqueeze(-2), points, dim=-1, eps=1e-8)
    best, index = cos.max(dim=-1)
    return PathPositive(best, candidates.gather(-1, index.unsqueeze(-1)).squeeze(-1))
