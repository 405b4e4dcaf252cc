"""Metrics watched while training: boundary precision / recall / F1 against word starts, byte accuracy.

Gold word starts (level 0): position 0 and every non-whitespace byte that follows a whitespace byte.
"""

from dataclasses import dataclass

import torch

WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


def word_starts(data: bytes) -> list[int]:
    """Positions of the first byte of each word: 0, and each non-space byte after a space."""
    starts = [0] if data else []
    starts += [i for i in range(1, len(data)) if data[i - 1] in WHITESPACE and data[i] not in WHITESPACE]
    return starts


@dataclass
class BoundaryScores:
    precision: float
    recall: float
    f1: float
    predicted: int
    gold: int


def boundary_scores(predicted: list[list[int]], gold: list[list[int]], tolerance: int = 0) -> BoundaryScores:
    """Micro-averaged boundary precision / recall / F1 over documents. A predicted boundary is correct when a
    gold one lies within `tolerance` positions (each gold boundary matched at most once)."""
    hits_p = hits_g = n_pred = n_gold = 0
    for pred, ref in zip(predicted, gold):
        pred_set, ref_set = sorted(set(pred)), sorted(set(ref))
        n_pred, n_gold = n_pred + len(pred_set), n_gold + len(ref_set)
        used: set[int] = set()
        for p in pred_set:
            match = next((g for g in range(p - tolerance, p + tolerance + 1) if g in ref_set and g not in used), None)
            if match is not None:
                used.add(match)
                hits_p += 1
        hits_g += len(used)
    precision = hits_p / n_pred if n_pred else 0.0
    recall = hits_g / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BoundaryScores(precision, recall, f1, n_pred, n_gold)


def byte_accuracy(reconstructed: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[int, int]:
    """(correct bytes, total bytes): position-wise matches of each reconstruction against its input row;
    missing or extra bytes count as errors (total = max of the two lengths)."""
    correct = total = 0
    for row, ids, mask in zip(reconstructed, input_ids, attention_mask.bool()):
        target = ids[mask].to(row.device)
        n = min(len(row), len(target))
        correct += int((row[:n] == target[:n]).sum())
        total += max(len(row), len(target))
    return correct, total
