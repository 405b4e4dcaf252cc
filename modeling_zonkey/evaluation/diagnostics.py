"""Diagnostics that show a collapsing decoder or a frozen splitter while it happens.

denoiser_curve: encode a batch (eval-mode segmentation), noise the latents of every level to t, decode them
    ONCE (no sampler, no clamping) and compare with the clean segments:
        level 0:  byte accuracy of the nearest byte embeddings (ownership-weighted, i.e. per byte), and from the
            decoder's distribution over bytes (the training loss's softmax of 2 atanh(cos) logits):
            true_byte_probability, the mean p(true byte): the share of bytes that a draw from that distribution gets
            right, what a sampler that ends in a sample of the model's posterior can expect; expected_accuracy, the
            mean max_b p(b): what the nearest bytes would get right if the distribution were calibrated (above
            `accuracy`: over-confident; below: under-confident);
        level >= 1: mean cos(X_hat, X) (ownership-weighted);
        pairwise_cosine: mean cosine between decoded vectors of different positions (1.0: the decoder emits one
            vector for everything), next to the same number for the clean targets (`target_pairwise_cosine`).
spell: what level 0 spells from given word latents (level 1's estimates, in sampling) and how sure it is of the
    bytes: the mean max p of the decoder's distribution over the bytes it keeps.
bos_saturation: the share of p_bos within 1e-4 of 0 or 1 (the first checkpoint's clip bounds, where its splitter
    got no gradient), per level.
"""

import torch
import torch.nn.functional as F

from ..ddmm import add_noise
from ..level import chunk_documents
from ..sampling import check_seed, kept_length
from ..sphere import cosine_logits
from ..tokenization_zonkey import NUM_BYTES

SATURATION = 1e-4


def mean_pairwise_cosine(vectors: torch.Tensor, max_vectors: int = 4096) -> float:
    """Mean cos(u_i, u_j) over pairs i != j of (n, d) vectors (the first max_vectors of them)."""
    unit = F.normalize(vectors[:max_vectors].float(), dim=-1)
    n = len(unit)
    if n < 2:
        return float("nan")
    total = unit.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def level_inputs(model, outputs, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The sequence each level read and, at level 0, its byte ids: [(x (B_l, N_l, d_l), ids or None), ...]."""
    inputs = [(model.embed_bytes(input_ids), input_ids)]
    for index in range(1, model.config.num_levels):
        below = outputs[index - 1]
        x, _, _ = chunk_documents(below.latents[below.latent_mask], below.segments.document, below.segments.counts,
                                  model.config.document_length[index])
        inputs.append((x, None))
    return inputs


def byte_distribution(model, vectors: torch.Tensor) -> torch.Tensor:
    """(..., d_0) decoded level-0 vectors -> (..., NUM_BYTES) the decoder's distribution over bytes: the softmax of the
    2 atanh(cos) logits against the byte embeddings that level 0's reconstruction loss trains."""
    vocabulary = F.normalize(model.byte_embeddings.weight[:NUM_BYTES].float(), dim=-1)
    return cosine_logits(F.normalize(vectors.float(), dim=-1) @ vocabulary.T).softmax(-1)


@torch.no_grad()
def spell(model, latents: torch.Tensor, noise_level: float = 0.0) -> list[tuple[bytes, float]]:
    """(N, C_0 d_0) level-0 latents -> for each, (the bytes level 0 spells from it, level 0's confidence in them).

    Level 0's decoder reads each latent at t = noise_level (what clamping does with `clamp_noise_level`); the bytes are
    the nearest byte embeddings of the positions kept up to where the decoded existence first falls to the model's
    existence_threshold (at least one), and the confidence is the mean over those bytes of max_b p(b) under the
    decoder's distribution (`byte_distribution`): 1 where every kept byte is certain, about 1/256 where none is."""
    level = model.levels[0]
    decoded = level.decoder(latents, torch.full((len(latents),), float(noise_level), device=latents.device))
    best = byte_distribution(model, decoded.sequence).max(-1)
    lengths = kept_length(decoded.existence, model.config.existence_threshold).tolist()
    return [(bytes(best.indices[i, :n].tolist()), float(best.values[i, :n].mean())) for i, n in enumerate(lengths)]


@torch.no_grad()
def denoiser_curve(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, noise_levels: tuple[float, ...],
                   seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{"level{l}": {"t={t}": {"accuracy" (level 0) or "cosine" (levels >= 1), "pairwise_cosine",
    "target_pairwise_cosine"}}} from one decode of the latents noised to each t (noise seeded with `seed`, an integer
    in [0, 2**63 - 1])."""
    check_seed(seed)
    outputs = model(input_ids, attention_mask).levels
    generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    results: dict = {}
    for index, ((x, ids), output) in enumerate(zip(level_inputs(model, outputs, input_ids), outputs)):
        level, segments = model.levels[index], output.segments
        latents = output.latents[output.latent_mask]
        weight = segments.ownership
        own = weight > 0.5  # each position's main window: the segment's own bytes (eval-mode boundaries)
        targets = segments.gather(x)
        per_t = {}
        for t in noise_levels:
            times = torch.full((len(latents),), float(t), device=latents.device)
            decoded = level.decoder(add_noise(latents, times, generator=generator), times).sequence
            if ids is not None:
                true_ids = segments.gather(ids)
                hits = (model.nearest_bytes(decoded.flatten(0, 1)).view(weight.shape) == true_ids).float()
                p = byte_distribution(model, decoded)
                p_true = p.gather(-1, true_ids.clamp_max(p.shape[-1] - 1)[..., None])[..., 0]  # pad: weight 0
                score = {"accuracy": hits, "true_byte_probability": p_true, "expected_accuracy": p.amax(-1)}
                score = {name: float((value * weight).sum() / weight.sum()) for name, value in score.items()}
            else:
                cos = F.cosine_similarity(decoded.float(), targets.float(), dim=-1)
                score = {"cosine": float((cos * weight).sum() / weight.sum())}
            per_t[f"t={t:g}"] = {**score, "pairwise_cosine": mean_pairwise_cosine(decoded[own]),
                                 "target_pairwise_cosine": mean_pairwise_cosine(targets[own])}
        results[f"level{index}"] = per_t
    return results


@torch.no_grad()
def bos_saturation_counts(outputs) -> list[tuple[int, int]]:
    """Per level: (saturated, total) p_bos over real positions after the first; saturated = within 1e-4 of 0 or 1."""
    counts = []
    for output in outputs:
        inner = output.valid.clone()
        inner[:, 0] = False
        p = output.bos_probs[inner]
        counts.append((int(((p < SATURATION) | (p > 1 - SATURATION)).sum()), len(p)))
    return counts


def bos_saturation(outputs) -> list[float]:
    """Per level: the share of p_bos (real positions after the first) within 1e-4 of 0 or 1."""
    return [saturated / total if total else float("nan") for saturated, total in bos_saturation_counts(outputs)]
