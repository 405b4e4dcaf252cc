"""Where the bytes are lost on the way down from the top: measurements that need no training.

For each level l >= 1 of a trained model, on held-out documents (eval-mode segmentation, t = 0):
    decoded_cosine: cos(X_hat, X) of level l's decoded vectors against the level-(l - 1) latents they stand for, per
        window position (ownership-weighted), overall, and the share of a segment's own positions (ownership > 0.5)
        above 0.9 / 0.95; `stitched_cosine`: the same after the stitcher (true offsets), i.e. what level l - 1 is
        handed.
    sensitivity: how good level l must be. Level l - 1's own latents replaced by themselves turned to cos c
        (a random direction orthogonal to each), decoded down at t = 0 and at t = 1 - c^2 (the noise level whose
        z_t has that cosine with z), with the true offsets: byte accuracy and CER.
    top: reconstruction from level l with each handoff noise level (the t at which the levels below decode level
        l's estimates), with the encoder's offsets at every level ("oracle"), inferred at level l only, and
        inferred everywhere (as generation does).
And at the bottom, `level0_errors`: level 0's own byte errors at t = 0 by segment length and by window position.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein

from ..sphere import expected_norm
from .diagnostics import level_inputs
from .metrics import byte_accuracy


@dataclass
class Encoded:
    """One batch encoded: what decoding from any level needs."""

    outputs: tuple  # ZonkeyLevelOutput per level
    inputs: list  # (x, ids) per level: what each level read
    latents: list[list[torch.Tensor]]  # [level][row] (K, C d)
    parents: dict[int, torch.Tensor]
    gaps: dict[int, list[torch.Tensor]]  # [level][row] the true offsets (and the last segment's length)


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
    outputs = model(input_ids, attention_mask).levels
    latents, gaps = [], {}
    for index, output in enumerate(outputs):
        rows = range(len(output.parent))
        latents.append([output.latents[r][output.latent_mask[r]] for r in rows])
        gaps[index] = [output.segments.gap[output.segments.document == r] for r in rows]
    parents = {index: outputs[index].parent for index in range(1, len(outputs))}
    return Encoded(outputs, level_inputs(model, outputs, input_ids), latents, parents, gaps)


def turn_to_cosine(vectors: torch.Tensor, cosine: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each (n, D) vector turned to cosine `cosine` (one for all, or one per vector: (n,)) with itself along a random
    orthogonal direction, on its sphere."""
    unit = F.normalize(vectors.float(), dim=-1)
    noise = torch.randn(unit.shape, generator=generator, device=unit.device)
    noise = F.normalize(noise - (noise * unit).sum(-1, keepdim=True) * unit, dim=-1)
    if isinstance(cosine, torch.Tensor):
        cosine = cosine.float().clamp(-1.0, 1.0).unsqueeze(-1)
    turned = cosine * unit + (1.0 - cosine**2) ** 0.5 * noise
    return (turned * expected_norm(vectors.shape[-1])).to(vectors.dtype)


class ByteScores:
    """Byte accuracy and CER summed over batches."""

    def __init__(self):
        self.correct = self.total = self.edits = self.size = 0

    def add(self, rows: list[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> None:
        correct, total = byte_accuracy(rows, ids, mask)
        self.correct, self.total = self.correct + correct, self.total + total
        for row, target, real in zip(rows, ids, mask.bool()):
            data = bytes(target[real].tolist())
            self.edits += Levenshtein.distance(bytes(row.tolist()), data)
            self.size += len(data)

    def result(self) -> dict[str, float]:
        return {"byte_accuracy": self.correct / max(self.total, 1), "cer": self.edits / max(self.size, 1)}


@torch.no_grad()
def hierarchy_diagnosis(model, batches, cosines: tuple[float, ...] = (1.0, 0.99, 0.95, 0.9, 0.8),
                        handoff_levels: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5), seed: int = 0) -> dict:
    """batches: an iterable of (input_ids, attention_mask). Returns {"level{l}": {...}} for l >= 1 (module doc)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    levels = range(1, model.config.num_levels)
    window = {level: model.config.window_length[level] for level in levels}
    per_position = {level: torch.zeros(2, window[level], dtype=torch.float64) for level in levels}
    # > 0.9, > 0.95, own positions, stitched cosine sum, stitched positions
    shares = {level: torch.zeros(5, dtype=torch.float64) for level in levels}
    sensitivity = {(level, c, kind): ByteScores() for level in levels for c in cosines for kind in ("t=0", "t=1-c^2")}
    top = {(level, t, offsets): ByteScores() for level in levels for t in handoff_levels
           for offsets in ("oracle", "inferred at this level", "inferred everywhere")}
    for input_ids, attention_mask in batches:
        encoded = encode(model, input_ids, attention_mask)
        for level in levels:
            output, segments = encoded.outputs[level], encoded.outputs[level].segments
            targets = segments.gather(encoded.inputs[level][0])
            flat = output.latents[output.latent_mask]
            decoded = model.levels[level].decoder(flat, torch.zeros(len(flat), device=flat.device))
            cos = F.cosine_similarity(decoded.sequence.float(), targets.float(), dim=-1)
            weight = segments.ownership.double()
            per_position[level][0] += (cos.double() * weight).sum(0).cpu()
            per_position[level][1] += weight.sum(0).cpu()
            own = segments.ownership > 0.5
            shares[level][:3] += torch.tensor([float((cos[own] > 0.9).sum()), float((cos[own] > 0.95).sum()),
                                               float(own.sum())], dtype=torch.float64)
            # what the level below is handed: the stitched rows (true offsets) against the rows level l encoded
            pieces = model.levels[level].decode_pieces(encoded.latents[level], encoded.gaps[level])
            x, valid = encoded.inputs[level][0], output.valid
            for row, parts in enumerate(pieces):
                stitched = F.cosine_similarity(torch.cat(parts).float(), x[row][valid[row]].float(), dim=-1)
                shares[level][3] += float(stitched.sum())
                shares[level][4] += len(stitched)
            # level l - 1 handed its own latents turned to cos c
            for c in cosines:
                turned = [turn_to_cosine(row, c, generator) for row in encoded.latents[level - 1]]
                for kind, t in (("t=0", 0.0), ("t=1-c^2", 1.0 - c**2)):
                    rows = model.decode_latents(turned, level - 1, encoded.parents, encoded.gaps,
                                                handoff_noise_level=t, estimates=True)
                    sensitivity[level, c, kind].add(rows, input_ids, attention_mask)
            for t in handoff_levels:
                for offsets in ("oracle", "inferred at this level", "inferred everywhere"):
                    gaps = {"oracle": encoded.gaps, "inferred everywhere": None,
                            "inferred at this level": {k: v for k, v in encoded.gaps.items() if k != level}}[offsets]
                    rows = model.decode_latents(encoded.latents[level], level, encoded.parents, gaps,
                                                handoff_noise_level=t)
                    top[level, t, offsets].add(rows, input_ids, attention_mask)
    results = {}
    for level in levels:
        sums, weights = per_position[level]
        above_09, above_095, count, stitched, stitched_count = shares[level].tolist()
        results[f"level{level}"] = {
            "decoded_cosine": float(sums.sum() / weights.sum()),
            "decoded_cosine_by_position": (sums / weights.clamp_min(1e-9)).tolist(),
            "share_above_0.9": above_09 / max(count, 1),
            "share_above_0.95": above_095 / max(count, 1),
            "stitched_cosine": stitched / max(stitched_count, 1),
            "sensitivity": {f"cos={c:g}": {kind: sensitivity[level, c, kind].result() for kind in ("t=0", "t=1-c^2")}
                            for c in cosines},
            "top": {f"t={t:g}": {offsets: top[level, t, offsets].result()
                                 for offsets in ("oracle", "inferred at this level", "inferred everywhere")}
                    for t in handoff_levels},
        }
    return results


@torch.no_grad()
def level0_errors(model, batches) -> dict:
    """Level 0's own reconstruction errors at t = 0: each byte read from the segment that owns it (ownership > 0.5,
    eval-mode segmentation), decoded from its segment's clean latent and snapped to the nearest byte embedding.
    batches: an iterable of (input_ids, attention_mask). Returns {"by_length": {n: {"bytes", "error_rate",
    "share_of_errors"}} for each segment length n in 1..L_0 that occurs, "error_rate_by_position": [L_0 floats]}."""
    window = model.config.window_length[0]
    by_length = torch.zeros(window + 1, 2, dtype=torch.float64)  # [length] (wrong, bytes)
    by_position = torch.zeros(window, 2, dtype=torch.float64)
    for input_ids, attention_mask in batches:
        output = model(input_ids, attention_mask).levels[0]
        segments, latents = output.segments, output.latents[output.latent_mask]
        decoded = model.levels[0].decoder(latents, torch.zeros(len(latents), device=latents.device)).sequence
        wrong = model.nearest_bytes(decoded.flatten(0, 1)).view(decoded.shape[:2]) != segments.gather(input_ids)
        own = segments.ownership > 0.5
        wrong, lengths = (wrong & own).double().cpu(), own.sum(1).cpu()
        by_length[:, 0].index_add_(0, lengths, wrong.sum(1))
        by_length[:, 1].index_add_(0, lengths, lengths.double())
        by_position += torch.stack([wrong.sum(0), own.double().cpu().sum(0)], dim=1)
    total = float(by_length[:, 0].sum())
    return {"by_length": {n: {"bytes": int(b), "error_rate": w / b, "share_of_errors": w / max(total, 1.0)}
                          for n, (w, b) in enumerate(by_length.tolist()) if b > 0},
            "error_rate_by_position": (by_position[:, 0] / by_position[:, 1].clamp_min(1)).tolist()}
