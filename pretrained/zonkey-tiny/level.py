"""One hierarchy level: Segment Splitter -> Compressor -> Decoder (DDMM) -> Stitcher, and its losses.

Level l reads a sequence of vectors (bytes at level 0, level-(l-1) latents above), splits it into
overlapping windows, compresses each window into one latent and learns to decode latents back. The
latents of a document, in order, form the input of level l + 1 (no detach: training is end to end).
"""

from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .compressor import Compressor, MaskedVectorHead, anti_collapse_loss, info_nce
from .configuration_zonkey import ZonkeyConfig
from .ddmm import add_noise, deterministic_step, light_noise_levels, path_positive
from .decoder import Decoder, DecoderOutput
from .segment_splitter import (
    Segments,
    SegmentSplitter,
    SplitterOutput,
    build_segments,
    compression_loss,
    density_factor,
    mean_bos_probability,
    patch_loss,
    short_segment_loss,
)
from .sphere import cosine_logits, full_precision
from .stitcher import Stitcher, position_loss


@dataclass
class LevelTargets:
    """What a level reconstructs: byte ids against the byte embeddings (level 0) or the input vectors."""

    vectors: torch.Tensor  # (B, N, d) the level's input sequence
    ids: torch.Tensor | None = None  # (B, N) byte ids (level 0 only)
    vocabulary: torch.Tensor | None = None  # (V, d) byte embeddings (level 0 only)


@dataclass
class ZonkeyLevelOutput:
    bos_probs: torch.Tensor  # (B_l, N_l)
    boundaries: torch.Tensor  # (B_l, N_l) bool
    valid: torch.Tensor  # (B_l, N_l) bool: real positions
    latents: torch.Tensor  # (B_l, S_l, C_l d_l): the segment latents of each row, padded
    latent_mask: torch.Tensor  # (B_l, S_l) bool
    segments: Segments
    parent: torch.Tensor  # (B_l,) row of the level below (level 0: the input row)
    loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    # with the loss: the clean pass, (indices of the decoded segments (M',), X1 (M', L, d_l)), which the level
    # above's handoff term reads (ZonkeyModel.handoff_term)
    decoded: tuple[torch.Tensor, torch.Tensor] | None = None


class ZonkeyLevel(nn.Module):
    def __init__(self, config: ZonkeyConfig, level: int):
        super().__init__()
        self.level = level
        self.config = config
        d, heads, L, C = (config.hidden_size[level], config.num_attention_heads[level],
                          config.window_length[level], config.num_cls_vectors[level])
        self.window_length, self.num_cls = L, C
        self.splitter = SegmentSplitter(d, heads, L, config.splitter_conv_kernels, config.ffn_multiplier)
        self.compressor = Compressor(d, heads, config.compressor_layers[level], C, config.ffn_multiplier,
                                     config.compressor_conv_norm)
        self.decoder = Decoder(d, heads, C, L, config.decompressor_layers[level], config.denoiser_layers[level],
                               config.ffn_multiplier, config.time_embedding, config.denoiser_existence,
                               config.self_conditioning)
        self.stitcher = Stitcher(d, heads, L)
        self.masked_vector = (MaskedVectorHead(d, config.mask_probability, config.masked_vector_negatives)
                              if level >= 1 else None)
        self.splitter_frozen = False  # ZonkeyModel.freeze_splitters: p_bos without autograd

    # ----------------------------------------------------------------------------------------- encode
    def forward(self, x: torch.Tensor, valid: torch.Tensor, parent: torch.Tensor,
                targets: LevelTargets | None = None) -> ZonkeyLevelOutput:
        """x (B, N, d) on the sphere, valid (B, N) bool, parent (B,). With targets, computes the loss terms."""
        threshold = None if self.training else self.config.existence_threshold
        with torch.no_grad() if self.splitter_frozen else nullcontext():
            split: SplitterOutput = self.splitter(x, valid, threshold)
        segments = build_segments(split.bos_probs, split.boundaries, valid, self.window_length, split.log_not_bos)
        windows = segments.gather(x)
        latents = self.compressor(windows, segments.existence).latents
        padded, mask = pad_by_document(latents, segments.document, segments.counts)
        output = ZonkeyLevelOutput(split.bos_probs, split.boundaries, valid, padded, mask, segments, parent)
        if targets is not None:
            output.loss_terms, output.decoded = self.loss_terms(split, segments, windows, latents, targets, valid)
        return output

    # ------------------------------------------------------------------------------------------ losses
    def loss_terms(self, split: SplitterOutput, segments: Segments, windows: torch.Tensor, latents: torch.Tensor,
                   targets: LevelTargets, valid: torch.Tensor,
                   ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Every named loss term of this level (unweighted scalars), and the clean pass (the decoded segments'
        indices (M',), X1 (M', L, d)) for the handoff term of the level above."""
        config, L, p = self.config, self.window_length, split.bos_probs
        mean_p = mean_bos_probability(p, valid)
        density = density_factor(mean_p, L, config.density_offset)
        terms = {
            "patch": patch_loss(p, valid, L, split.log_not_bos),
            "short_segment": short_segment_loss(p, valid, self.num_cls, split.log_not_bos),
            "compression": compression_loss(mean_p, L),
            "anti_collapse": anti_collapse_loss(latents, segments.document),
        }
        if self.masked_vector is not None:
            terms["masked_vector"] = self.masked_vector(self.compressor, windows, segments.existence).mean()

        chosen = self.choose_decoded(len(latents), config.max_decoded_segments[self.level], latents.device)
        sub = SegmentBatch.take(segments, windows, chosen, targets, valid)
        z = latents[chosen]
        passes = self.clean_and_heavy_passes(z, targets.vocabulary)
        clean = passes.clean
        terms["reconstruction"] = density * sub.average(self.reconstruction(clean.sequence, sub))
        if sub.ids is None and config.loss_weight("regression") > 0:  # levels >= 1: pull cos(X_hat, X) itself up
            terms["regression"] = density * sub.average(cosine_distance(clean.sequence, sub))
        terms.update(self.stitcher_terms(segments, windows, chosen, clean, sub, density))
        # The noisy passes train the decoder (and the compressor through z), not the segmentation: their loss at
        # high t measures how predictable a window's bytes are without its latent, and through ownership and
        # density it would reward segments that start with a predictable byte (a space) rather than words.
        diffusion = self.diffusion_terms(sub.with_fixed_segmentation(), passes)
        terms["denoising"] = density.detach() * diffusion.denoising
        if diffusion.ddmm is not None:
            terms["ddmm"] = density.detach() * diffusion.ddmm
        terms["existence"] = torch.stack([self.existence_loss(out, sub) for out in (clean, diffusion.heavy)]).mean()
        return terms, (chosen, clean.sequence)

    def existence_loss(self, decoded: DecoderOutput, sub: "SegmentBatch") -> torch.Tensor:
        """BCE of the decoder's existence against the splitter's (the segment's soft length). -> scalar. Written out
        (F.binary_cross_entropy raises on NaN; a diverged step must reach the training script's non-finite guard)."""
        e = decoded.existence.clamp(1e-6, 1 - 1e-6)
        target = sub.existence.detach().clamp(0.0, 1.0)
        return -(target * e.log() + (1 - target) * (1 - e).log()).mean()

    def clean_and_heavy_passes(self, latents: torch.Tensor, vocabulary: torch.Tensor | None = None) -> "DecoderPasses":
        """The clean pass Dec(z_t0, t0), t0 small (light_noise_levels), and the heavy pass X2 = Dec(z_t1, t1),
        t1 ~ U(0, 1) (or U(0, 1) ** 0.5, `heavy_noise_draw`), as one batched decoder call (the decoder treats rows
        independently). latents (M', C d).

        Self-conditioning: half of the heavy rows (at random) first get a gradient-free estimate of their clean
        latent, `estimate(z_t1, t1)`, as the decoder's extra input; the other rows and the clean pass get none.
        vocabulary (V, d): the byte embeddings at level 0 (the estimates are snapped to bytes, as the sampler's
        clamping does there; above level 0 training does not clamp through the level below, as the sampler does).
        """
        count, device = len(latents), latents.device
        t0 = light_noise_levels(count, self.config.light_noise_scale, device)
        noised0 = add_noise(latents, t0)
        t1 = torch.rand(count, device=device)
        if self.config.heavy_noise_draw == "sqrt":  # density 2 t: more of the rows at high noise
            t1 = t1.sqrt()
        noised1 = add_noise(latents, t1)
        condition = None
        if self.decoder.self_conditioning:
            condition = torch.zeros(2 * count, latents.shape[1], device=device, dtype=latents.dtype)
            rows = (torch.rand(count, device=device) < 0.5).nonzero().flatten()
            if len(rows):
                with torch.no_grad():
                    condition[count + rows] = self.estimate(noised1[rows], t1[rows], vocabulary).to(condition.dtype)
        both = self.decoder(torch.cat([noised0, noised1]), torch.cat([t0, t1]), condition)
        clean = DecoderOutput(both.sequence[:count], both.existence[:count])
        heavy = DecoderOutput(both.sequence[count:], both.existence[count:])
        return DecoderPasses(clean, heavy, t1, noised1, vocabulary)

    def estimate(self, z: torch.Tensor, t: torch.Tensor, vocabulary: torch.Tensor | None = None,
                 condition: torch.Tensor | None = None) -> torch.Tensor:
        """The clean latent a sampler step would estimate: Compress(snap(Dec(z_t, t))). z (M, C d), t (M,) ->
        (M, C d); with vocabulary (level 0), each decoded vector is snapped to its nearest byte embedding."""
        decoded = self.decoder(z, t, condition)
        return self.recompress(decoded, vocabulary)

    def recompress(self, decoded: DecoderOutput, vocabulary: torch.Tensor | None = None) -> torch.Tensor:
        """A decoded window (snapped to bytes at level 0 when vocabulary is given) compressed again -> (M, C d)."""
        sequence = decoded.sequence
        if vocabulary is not None:
            cos = F.normalize(sequence.float(), dim=-1) @ F.normalize(vocabulary.float(), dim=-1).T
            sequence = vocabulary[cos.argmax(-1)].to(sequence.dtype)
        return self.compressor(sequence, decoded.existence.to(sequence.dtype), latents_only=True).latents

    def diffusion_terms(self, sub: "SegmentBatch", passes: "DecoderPasses") -> "DiffusionTerms":
        """The decoder trained at every noise level, and (mixed objective) on its own re-compressed estimates.

        heavy: X2 = Dec(z_t1, t1), t1 ~ U(0, 1) (from `clean_and_heavy_passes`), reconstruction loss against the
        clean segment ("denoising"). light ("mixed" only): z'' = Compress(X2) without gradient, t2 ~ U(0, t1) (the
        next, lower noise level a sampler with any number of steps visits), X3 = Dec(z''_t2, t2) ("ddmm"). Level
        0: byte cross-entropy of X3; levels >= 1: InfoNCE whose positive is the best point of the path from X2
        (detached) to X (`ddmm_positive="path"`, the paper) or X itself ("direct"). `light_pass_weight="one_minus_t"`
        weights each row's light loss by 1 - t1 (normalised to mean 1). With self-conditioning the light pass is the
        sampler's step: z_t2 = `deterministic_step(z_t1, z'', t1, t2)` (z_t1's noise kept) and X3 = Dec(z_t2, t2, z'').
        """
        heavy, t1 = passes.heavy, passes.t1
        denoising = sub.average(self.reconstruction(heavy.sequence, sub))
        if self.config.ddmm_objective == "single_step":
            return DiffusionTerms(heavy, denoising, None)
        fraction, light_sub, x2, t1_light, z1 = self.config.light_pass_fraction, sub, heavy, t1, passes.noised1
        if fraction < 1.0:  # the light pass on a random share of the rows (speed option)
            keep = torch.randperm(len(t1), device=t1.device)[: max(1, round(fraction * len(t1)))].sort().values
            light_sub, t1_light, z1 = sub.subset(keep), t1[keep], z1[keep]
            x2 = DecoderOutput(heavy.sequence[keep], heavy.existence[keep])
        if self.decoder.self_conditioning:
            with torch.no_grad():
                estimate = self.recompress(x2, passes.vocabulary)
            t2 = t1_light * torch.rand(len(t1_light), device=t1.device)
            light = self.decoder(deterministic_step(z1, estimate, t1_light, t2), t2, estimate)
        else:
            with torch.no_grad():
                estimate = self.compressor(x2.sequence, x2.existence).latents
            t2 = t1_light * torch.rand(len(t1_light), device=t1.device)
            light = self.decoder(add_noise(estimate, t2), t2)
        positive = None
        if sub.ids is None and self.config.ddmm_positive == "path":
            positive = path_positive(light.sequence, x2.sequence.detach(), light_sub.windows).cosine
        losses = self.reconstruction(light.sequence, light_sub, positive)
        if self.config.light_pass_weight == "one_minus_t":  # an estimate from less noise teaches more (mean 1)
            weight = 1.0 - t1_light
            losses = losses * (weight / weight.mean().clamp_min(1e-6))[:, None]
        return DiffusionTerms(heavy, denoising, light_sub.average(losses))

    def stitcher_terms(self, segments: Segments, windows: torch.Tensor, chosen: torch.Tensor, clean: DecoderOutput,
                       sub: "SegmentBatch", density: torch.Tensor) -> dict[str, torch.Tensor]:
        """Position loss on raw and decoded pairs, sequence loss of the refined decoded segment."""
        raw = segments.has_next.nonzero().squeeze(1)
        raw_offset = self.stitcher.infer_offset(windows[raw], segments.existence[raw], windows[raw + 1])
        raw_loss = position_loss(raw_offset.n_hat, segments.gap[raw], segments.in_document[raw])
        # decoded pairs: both segments chosen for decoding and consecutive in one document
        pair = (segments.has_next[chosen[:-1]] & (chosen[1:] == chosen[:-1] + 1)).nonzero().squeeze(1)
        if len(pair) == 0:
            zero = clean.sequence.sum() * 0.0
            return {"stitcher_position": density * raw_loss.mean() if len(raw) else zero, "stitcher_sequence": zero}
        seq1, e1 = clean.sequence[pair], clean.existence[pair]
        seq2, e2 = clean.sequence[pair + 1], clean.existence[pair + 1]
        gap = sub.gap[pair]
        decoded_offset = self.stitcher.infer_offset(seq1, e1, seq2)
        decoded_loss = position_loss(decoded_offset.n_hat, gap, sub.in_document[pair])
        refined = self.stitcher.refine(seq1, e1, seq2, e2, gap)
        first = sub.subset(pair)
        return {
            "stitcher_position": density * torch.cat([raw_loss, decoded_loss]).mean(),
            "stitcher_sequence": density * first.average(self.reconstruction(refined, first)),
        }

    def reconstruction(self, prediction: torch.Tensor, sub: "SegmentBatch",
                       positive_cos: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position loss (M', L). Level 0: cross-entropy over bytes with 2 atanh(cos) logits against the
        byte embeddings; levels >= 1: InfoNCE against other positions' vectors. `positive_cos` replaces the
        target's cosine (the DDMM positive)."""
        with full_precision(prediction):
            return self._reconstruction(prediction, sub, positive_cos)

    def _reconstruction(self, prediction: torch.Tensor, sub: "SegmentBatch",
                        positive_cos: torch.Tensor | None) -> torch.Tensor:
        real = sub.in_document
        losses = prediction.new_zeros(real.shape, dtype=torch.float32)
        pred = prediction[real]
        if sub.targets.ids is not None:
            cos = F.normalize(pred.float(), dim=-1) @ F.normalize(sub.targets.vocabulary.float(), dim=-1).T
            ids = sub.ids[real]
            if positive_cos is not None:
                cos = cos.scatter(1, ids[:, None], positive_cos[real][:, None].to(cos.dtype))
            losses[real] = F.cross_entropy(cosine_logits(cos), ids, reduction="none")
        else:
            pool = sub.targets.vectors[sub.targets_valid]
            positive = None if positive_cos is None else positive_cos[real]
            negatives = None if self.config.infonce_negatives == "all" else self.config.num_negatives
            losses[real] = info_nce(pred, sub.windows[real], pool, negatives, positive)
        return losses

    def choose_decoded(self, count: int, cap: int, device: torch.device) -> torch.Tensor:
        """Indices (ascending) of the segments that go through the decoder: all, or a random `cap` of them."""
        if count <= cap:
            return torch.arange(count, device=device)
        return torch.randperm(count, device=device)[:cap].sort().values

    # ------------------------------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, gaps: torch.Tensor | None = None, refine: bool = True,
               cutoff: float | None = None) -> torch.Tensor:
        """One row's latents (K, C d) at t = 0 -> the stitched level-l sequence (N', d). cutoff: the existence
        below which the last segment's tail is dropped (default: config.existence_threshold)."""
        return torch.cat(self.decode_pieces([latents], [gaps], refine, cutoff)[0], dim=0)

    def decode_pieces(self, rows: list[torch.Tensor], gaps: list[torch.Tensor | None] | None = None,
                      refine: bool = True, cutoff: float | None = None,
                      noise_level: float = 0.0) -> list[list[torch.Tensor]]:
        """Several rows' latents (K_r, C d), through the decoder in one batch -> for each row, the stitcher's pieces
        (what each segment contributes to the row's sequence: K_r tensors (n, d)). noise_level: the t the decoder is
        told (0: the latents are clean; `ZonkeyConfig.handoff_noise_level` for an upper level's estimates)."""
        if not rows:
            return []
        cutoff = self.config.existence_threshold if cutoff is None else cutoff
        count = sum(len(r) for r in rows)
        out = self.decoder(torch.cat(rows), torch.full((count,), float(noise_level), device=rows[0].device))
        sizes = [len(r) for r in rows]
        return [self.stitcher.pieces(sequence, existence, row_gaps, cutoff, refine)
                for sequence, existence, row_gaps in zip(out.sequence.split(sizes), out.existence.split(sizes),
                                                         gaps or [None] * len(rows))]


def cosine_distance(prediction: torch.Tensor, sub: "SegmentBatch") -> torch.Tensor:
    """1 - cos(X_hat, X) per position, 0 outside the document. (M', L, d) -> (M', L), in float32."""
    with full_precision(prediction):
        cos = F.cosine_similarity(prediction.float(), sub.windows.float(), dim=-1)
        return (1.0 - cos) * sub.in_document


@dataclass
class SegmentBatch:
    """The decoded subset of a level's segments, with what their losses need."""

    windows: torch.Tensor  # (M', L, d) clean segment vectors
    existence: torch.Tensor  # (M', L) splitter existence
    ownership: torch.Tensor  # (M', L)
    in_document: torch.Tensor  # (M', L)
    gap: torch.Tensor  # (M',)
    ids: torch.Tensor | None  # (M', L) byte ids at level 0
    targets: LevelTargets
    targets_valid: torch.Tensor  # (B, N) real positions of the targets

    @classmethod
    def take(cls, segments: Segments, windows: torch.Tensor, chosen: torch.Tensor, targets: LevelTargets,
             valid: torch.Tensor) -> "SegmentBatch":
        ids = None if targets.ids is None else segments.gather(targets.ids)[chosen]
        return cls(windows[chosen], segments.existence[chosen], segments.ownership[chosen],
                   segments.in_document[chosen], segments.gap[chosen], ids, targets, valid)

    def with_fixed_segmentation(self) -> "SegmentBatch":
        """The same batch with its ownership detached: losses averaged with it do not train the splitter."""
        return replace(self, ownership=self.ownership.detach())

    def subset(self, index: torch.Tensor) -> "SegmentBatch":
        return replace(self, windows=self.windows[index], existence=self.existence[index],
                       ownership=self.ownership[index], in_document=self.in_document[index], gap=self.gap[index],
                       ids=None if self.ids is None else self.ids[index])

    def average(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-byte mean: each position weighted by its ownership (a real position's windows share mass 1), so
        a byte of a long segment weighs as much as a byte of a short one. (M', L) -> scalar."""
        weight = self.ownership
        return (losses * weight).sum() / weight.sum().clamp_min(1e-6)


@dataclass
class DecoderPasses:
    """What `ZonkeyLevel.clean_and_heavy_passes` returns."""

    clean: DecoderOutput  # Dec(z_t0, t0), t0 small
    heavy: DecoderOutput  # X2 = Dec(z_t1, t1)
    t1: torch.Tensor  # (M',) the heavy pass's noise levels
    noised1: torch.Tensor  # (M', C d) z_t1
    vocabulary: torch.Tensor | None = None  # (V, d) byte embeddings at level 0 (estimates snap to bytes)


@dataclass
class DiffusionTerms:
    """What `ZonkeyLevel.diffusion_terms` returns: the heavy pass and the per-byte losses of both passes."""

    heavy: DecoderOutput  # X2 = Dec(z_t1, t1)
    denoising: torch.Tensor  # scalar: reconstruction loss of X2
    ddmm: torch.Tensor | None  # scalar: loss of the light pass X3 (None for the single-step objective)


def pad_by_document(values: torch.Tensor, document: torch.Tensor, counts: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-segment values (M, ...) -> (B, max count, ...) padded with zeros, and the (B, S) mask."""
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(document), device=document.device) - starts[document]
    width = int(counts.max()) if len(counts) else 0
    padded = values.new_zeros(len(counts), width, *values.shape[1:])
    padded[document, slot] = values
    mask = torch.zeros(len(counts), width, dtype=torch.bool, device=values.device)
    mask[document, slot] = True
    return padded, mask


def owned_slots(segments: Segments, chosen: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the decoded segments `chosen` (M',) of a level >= 1: the window positions each one owns (ownership > 0.5,
    in the document) (M', L) bool, and at those positions the index of the level-below latent the slot holds (n,).
    slots (B, N) long: that index for every input slot of the level (see ZonkeyModel._forward)."""
    own = (segments.ownership[chosen] > 0.5) & segments.in_document[chosen]
    return own, segments.gather(slots)[chosen][own]


def chunk_documents(values: torch.Tensor, document: torch.Tensor, counts: torch.Tensor, chunk: int,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each row's sequence of latents into rows of at most `chunk` slots (chunking, never truncation).

    values (M, D), document (M,), counts (B,) -> (R, chunk, D), valid (R, chunk), parent (R,).
    """
    starts = torch.cumsum(counts, 0) - counts
    index = torch.arange(len(document), device=document.device) - starts[document]
    chunks_per_row = (counts + chunk - 1) // chunk
    row_start = torch.cumsum(chunks_per_row, 0) - chunks_per_row
    row = row_start[document] + index // chunk
    slot = index % chunk
    total = int(chunks_per_row.sum())
    out = values.new_zeros(total, chunk, values.shape[-1])
    out[row, slot] = values
    valid = torch.zeros(total, chunk, dtype=torch.bool, device=values.device)
    valid[row, slot] = True
    parent = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), chunks_per_row)
    return out, valid, parent
