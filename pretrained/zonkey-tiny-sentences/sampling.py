"""DDMM sampling at one level: noise schedules, per-sample seeded noise, and the denoising loop.

The loop (method.md Sec. 7), for t_0 > t_1 > ... > t_K = 0:
    X, e = Dec(z, t_k)                    the decoder's estimate of the clean window and its existence
    X = clamp(X)                          optional: snap the estimate to the data (see ZonkeyGenerationConfig)
    X, e = canvas(X, e)                   replacement: known positions keep their vectors (prompting)
    z0 = Compress(X, e)                   back to a clean latent
    "ddmm":          z = renoise(z0, t_{k+1}) with fresh noise
    "ddim":          z = renoise(z0, t_{k+1}) with the noise implied by z and z0 (eps_hat = (z - sqrt(1 - t_k) z0)
                     / sqrt(t_k)): deterministic given the starting noise, as DDIM; it keeps what the starting
                     noise decided instead of drawing it anew at every step
    "ancestral":     z = renoise(z0, t_{k+1}) with eps = sqrt(1 - f^2) eps_hat + f eps_new, f^2 = (t_k - t_{k+1}) /
                     (t_k (1 - t_{k+1})): DDPM's ancestral step (DDIM with eta = 1), a draw from q(z_{k+1} | z_k, z0):
                     fresh noise in proportion to the step's size, so z keeps what it knew (f = 1 at t_k = 1: the first
                     step from pure noise is "ddmm"'s)
    "deterministic": z = z0 (no re-noising; the paper's release)
and a final Dec(z, 0) (done by the caller). A decoder trained with self-conditioning (ZonkeyConfig.self_conditioning)
also reads the previous step's z0 at every step after the first, whichever the sampler. Sample i draws all its
noise from its own generator, so a batch of N samples equals N single runs with the same seeds.
"""

import math
from dataclasses import dataclass

import torch

from .ddmm import add_noise, deterministic_step, implied_noise
from .level import ZonkeyLevel

SAMPLERS = ("ddmm", "ddim", "ancestral", "deterministic")
NOISE_SCHEDULES = ("linear", "cosine", "quadratic")


def noise_schedule(kind: str, steps: int, t_start: float = 1.0) -> list[float]:
    """The noise levels t_0 = t_start > ... > t_steps = 0 (steps + 1 values).

    linear: t_k = t_start (1 - k / K); cosine: t_k = t_start cos(pi/2 * k / K) (more steps at high noise);
    quadratic: t_k = t_start (1 - k / K)^2 (more steps at low noise).
    """
    if kind not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {kind!r}.")
    fractions = [k / steps for k in range(steps + 1)]
    if kind == "linear":
        return [t_start * (1.0 - f) for f in fractions[:-1]] + [0.0]
    if kind == "quadratic":
        return [t_start * (1.0 - f) ** 2 for f in fractions[:-1]] + [0.0]
    return [t_start * math.cos(0.5 * math.pi * f) for f in fractions[:-1]] + [0.0]


MAX_SEED = 2**63 - 1  # torch's generators take seeds below 2**64; this bound leaves room for seed + i per sample


def check_seed(seed, name: str = "seed") -> None:
    """Raise ValueError unless `seed` is an integer in [0, MAX_SEED] (torch.manual_seed overflows past 2**64 - 1,
    and generate() seeds sample i with seed + i)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {seed!r}.")


def sample_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded with seeds[i]."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def sample_noise(generators: list[torch.Generator], owner: torch.Tensor, size: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """eps (M, size): row m drawn from the generator of its sample owner[m] (rows of one sample in order)."""
    owners = owner.tolist()
    if owners == list(range(len(generators))):  # one row per sample (a batch of windows): no grouping
        return torch.cat([torch.randn(1, size, generator=g, device=device, dtype=dtype) for g in generators])
    noise = torch.empty(len(owner), size, device=device, dtype=dtype)
    rows: dict[int, list[int]] = {}
    for row, sample in enumerate(owners):
        rows.setdefault(sample, []).append(row)
    for sample, generator in enumerate(generators):
        if sample in rows:
            index = torch.tensor(rows[sample], device=device)
            noise[index] = torch.randn(len(index), size, generator=generator, device=device, dtype=dtype)
    return noise


@dataclass
class Canvas:
    """Known positions of the windows being generated (replacement in latent space), for prompting.

    known (M, L, d): the vectors to keep (anything where unknown); known_mask (M, L) bool; must_exist (M, L)
    bool: positions whose existence is set to 1 (the known ones and, for infilling, the gap before a suffix).
    """

    known: torch.Tensor
    known_mask: torch.Tensor
    must_exist: torch.Tensor

    def apply(self, sequence: torch.Tensor, existence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, L, d), (M, L) -> the same with the known vectors put back and existence forced to 1."""
        sequence = torch.where(self.known_mask[..., None], self.known.to(sequence.dtype), sequence)
        existence = torch.where(self.must_exist, torch.ones_like(existence), existence)
        return sequence, existence


def ancestral_fresh_share(t: float, t_next: float) -> float:
    """The share f of fresh noise in DDPM's ancestral step from t to t_next < t (z_t = sqrt(t) eps + sqrt(1 - t) z0):
    its posterior variance sigma^2 = t_next (t - t_next) / (t (1 - t_next)) over the t_next of the whole noise,
    f^2 = (t - t_next) / (t (1 - t_next)). 1 at t = 1, -> 0 as the step shrinks."""
    return math.sqrt(min(1.0, (t - t_next) / (t * (1.0 - t_next))))


def denoise(level: ZonkeyLevel, z: torch.Tensor, schedule: list[float], sampler: str,
            generators: list[torch.Generator], owner: torch.Tensor, canvas: Canvas | None = None,
            progress=None, clamp=None, fresh_noise: float = 0.0, on_step=None) -> torch.Tensor:
    """Run the sampler from z at t = schedule[0] down to a clean latent. z (M, C d) -> (M, C d).

    fresh_noise ("ddim" only): the share f of fresh noise in each re-noising, eps = sqrt(1 - f^2) eps_hat + f eps_new
    (0: "ddim", deterministic; 1: "ddmm"). eps_hat is not renormalised: where the estimate is poor its norm exceeds
    the fresh draw's, so the fresh share is below f.
    owner (M,): the sample (index into generators) each latent belongs to, for the re-noising draws.
    progress: an optional tqdm bar, advanced once per step. clamp: (X (M, L, d), e (M, L), t) -> X, or None.
    on_step: an optional callable given each step's estimate of the clean window, X (M, L, d) and e (M, L) as
    compressed (clamped, canvas applied): what a draft streamer shows.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    condition = None  # self-conditioning: the previous step's clean-latent estimate
    for t, t_next in zip(schedule[:-1], schedule[1:]):
        out = level.decoder(z, torch.full((len(z),), t, device=z.device), condition)
        sequence, existence = out.sequence, out.existence
        if clamp is not None:
            sequence = clamp(sequence, existence, t)
        if canvas is not None:
            sequence, existence = canvas.apply(sequence, existence)
        estimate = level.compressor(sequence, existence.to(sequence.dtype), latents_only=True).latents
        if on_step is not None:
            on_step(sequence, existence)
        if level.decoder.self_conditioning:
            condition = estimate
        if sampler == "deterministic" or t_next <= 0:
            z = estimate
        elif sampler == "ddmm":
            eps = sample_noise(generators, owner, z.shape[1], z.device, z.dtype)
            z = add_noise(estimate, torch.full((len(z),), t_next, device=z.device), noise=eps)
        elif sampler == "ancestral" or fresh_noise > 0:  # part of the implied noise drawn anew
            share = ancestral_fresh_share(t, t_next) if sampler == "ancestral" else fresh_noise
            eps = implied_noise(z, estimate, torch.full((len(z),), t, device=z.device)).to(z.dtype)
            fresh = sample_noise(generators, owner, z.shape[1], z.device, z.dtype)
            eps = math.sqrt(1.0 - share**2) * eps + share * fresh
            z = add_noise(estimate, torch.full((len(z),), t_next, device=z.device), noise=eps)
        else:  # "ddim": on the sphere of radius nu(D), z ~ sqrt(t) eps + sqrt(1 - t) z0, eps the one z implies
            z = deterministic_step(z, estimate, torch.full((len(z),), t, device=z.device),
                                   torch.full((len(z),), t_next, device=z.device))
        if progress is not None:
            progress.update(1)
    return z


def final_decode(level: ZonkeyLevel, z: torch.Tensor, canvas: Canvas | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last decode at t = 0. z (M, C d) -> sequence (M, L, d), existence (M, L) (canvas applied)."""
    out = level.decoder(z, torch.zeros(len(z), device=z.device))
    if canvas is None:
        return out.sequence, out.existence
    return canvas.apply(out.sequence, out.existence)


def kept_length(existence: torch.Tensor, threshold: float, minimum: int = 1) -> torch.Tensor:
    """Positions kept from the start of each window: until existence first falls to the threshold.

    existence (M, L) -> (M,) lengths, at least `minimum`.
    """
    return (existence > threshold).long().cumprod(dim=1).sum(dim=1).clamp_min(minimum)
