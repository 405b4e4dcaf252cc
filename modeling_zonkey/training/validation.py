"""Validation while training: loss, byte reconstruction accuracy at t = 0, boundary scores (level 0 against word
starts, levels >= 1 against sentence starts), and the collapse diagnostics (one-decode reconstruction and
diversity against noise level, saturated p_bos).

Runs on every process of an Accelerate job and reduces the counts across them.
"""

import torch
from torch.distributed.fsdp import FSDPModule

from ..evaluation.diagnostics import bos_saturation, denoiser_curve
from ..evaluation.inspection import level_starts
from ..evaluation.metrics import (
    boundary_scores,
    byte_accuracy,
    edit_distance,
    sentence_starts,
    without_document_starts,
    word_starts,
)

# noise levels of the collapse diagnostics logged during training (one decode of the first validation batch)
DIAGNOSTIC_NOISE_LEVELS = (0.0, 0.3, 0.5, 1.0)


def diagnostic_scalars(model, batch, seed: int) -> dict[str, float]:
    """val/level{l}/{accuracy|cosine}_t{t}, val/level{l}/pairwise_cosine_t{t} and val/level{l}/p_bos_saturated."""
    curve = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], DIAGNOSTIC_NOISE_LEVELS, seed)
    scalars = {}
    for level, per_t in curve.items():
        for t, values in per_t.items():
            for name in ("accuracy", "cosine", "pairwise_cosine"):
                if name in values:
                    scalars[f"val/{level}/{name}_t{t[2:]}"] = values[name]
    outputs = model(batch["input_ids"], batch["attention_mask"]).levels
    for level, share in enumerate(bos_saturation(outputs)):
        scalars[f"val/level{level}/p_bos_saturated"] = share
    return scalars


@torch.no_grad()
def validate(model, loader, accelerator, max_batches: int, seed: int) -> dict[str, float]:
    """Validation loss, byte reconstruction accuracy at t = 0 (from level 0 and from the top, true offsets),
    level-0 boundary precision / recall / F1 against word starts (val/boundary_*), level l >= 1 F1 against sentence
    starts (val/level{l}/boundary_f1, and boundary_f1_inner without each document's forced first boundary), and the
    collapse diagnostics of `diagnostic_scalars` on the first batch (averaged over processes). Seeded inside a
    forked RNG (CPU and the accelerator's device), so evaluating does not move the training RNG: a run that
    evaluates at a step where another does not still draws the same training noise afterwards."""
    raw = accelerator.unwrap_model(model)
    was_training = raw.training
    raw.eval()
    loss_sum = batches = 0.0
    # level 0, then the top: correct bytes, compared bytes, edits; and the real bytes
    counts = torch.zeros(7, dtype=torch.float64, device=accelerator.device)
    levels = raw.config.num_levels
    predicted, gold = [[] for _ in range(levels)], [[] for _ in range(levels)]
    diagnostics: dict[str, float] = {}
    device = accelerator.device
    fork = (torch.random.fork_rng(devices=[]) if device.type == "cpu" else
            torch.random.fork_rng(devices=[device.index or 0], device_type=device.type))
    # FSDP2: gather every shard unit's weights for the evaluation (reconstruct() also calls decoders directly)
    units = [m for m in raw.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    with fork:
        torch.manual_seed(seed)
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            if index == 0:
                diagnostics = diagnostic_scalars(raw, batch, seed)
            out = raw(**batch, return_loss=True)
            loss_sum += out.loss.item()
            batches += 1
            for level, offset in ((0, 0), (None, 3)):
                rows = raw.reconstruct(**batch, from_level=level)
                c, t = byte_accuracy(rows, batch["input_ids"], batch["attention_mask"])
                counts[offset] += c
                counts[offset + 1] += t
                counts[offset + 2] += edit_distance(rows, batch["input_ids"], batch["attention_mask"])
            counts[6] += batch["attention_mask"].sum()
            mask = batch["attention_mask"].bool()
            for row, (ids, row_mask) in enumerate(zip(batch["input_ids"], mask)):
                data = bytes(ids[row_mask].tolist())
                for level, starts in enumerate(level_starts(out.levels, row)):
                    predicted[level].append(starts)
                    gold[level].append(word_starts(data) if level == 0 else sentence_starts(data))
    for unit in units:
        unit.reshard()
    raw.train(was_training)
    # per level, all boundaries then without each document's forced first one: P hits, predicted, R hits, gold
    hits = []
    for level in range(levels):
        inner = boundary_scores(without_document_starts(predicted[level]), without_document_starts(gold[level]))
        for scores in (boundary_scores(predicted[level], gold[level]), inner):
            hits += [scores.precision * scores.predicted, scores.predicted, scores.recall * scores.gold, scores.gold]
    local = torch.tensor([loss_sum, batches, *hits], dtype=torch.float64, device=accelerator.device)
    local = accelerator.reduce(torch.cat([local, counts]), reduction="sum").tolist()
    loss, n, (c0, t0, e0, ct, tt, et, size) = local[0], local[1], local[-7:]
    if n == 0:  # every process read nothing (reduced above, so all raise together)
        raise ValueError("evaluate read no validation batch (an empty loader, or max_batches < 1): nothing to report.")
    f1 = {}  # (level, inner) -> precision, recall, F1, predicted
    for index in range(2 * levels):
        hit_p, n_pred, hit_g, n_gold = local[2 + 4 * index : 6 + 4 * index]
        precision, recall = hit_p / max(n_pred, 1), hit_g / max(n_gold, 1)
        f1[divmod(index, 2)] = (precision, recall, 2 * precision * recall / max(precision + recall, 1e-12), n_pred)
    if diagnostics:  # every process evaluates the same number of batches (accelerate's even_batches): mean over them
        names = sorted(diagnostics)
        values = torch.tensor([[diagnostics[k] for k in names] + [1.0]], dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(values, reduction="sum")[0].tolist()
        diagnostics = {k: v / totals[-1] for k, v in zip(names, totals[:-1])}
    precision, recall, level0_f1, n_pred = f1[0, 0]
    return {
        "val/loss": loss / max(n, 1),
        "val/byte_accuracy_level0": c0 / max(t0, 1),
        "val/byte_accuracy_top": ct / max(tt, 1),
        "val/cer_level0": e0 / max(size, 1),
        "val/cer_top": et / max(size, 1),
        "val/boundary_precision": precision,
        "val/boundary_recall": recall,
        "val/boundary_f1": level0_f1,
        "val/bytes_per_segment": (t0 / max(n_pred, 1)),
        **{f"val/level{level}/boundary_f1": f1[level, 0][2] for level in range(1, levels)},
        **{f"val/level{level}/boundary_f1_inner": f1[level, 1][2] for level in range(1, levels)},
        **{f"val/level{level}/bytes_per_segment": t0 / max(f1[level, 0][3], 1) for level in range(1, levels)},
        **diagnostics,
    }
