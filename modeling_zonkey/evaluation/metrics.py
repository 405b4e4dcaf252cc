"""Metrics: boundary scores against word and sentence starts, AUPRC, over-segmentation, R-value, byte accuracy.

Gold word starts (level 0): position 0 and every non-whitespace byte that follows a whitespace byte.
"""

import math
from dataclasses import dataclass

import torch
from rapidfuzz.distance import Levenshtein

from ..tokenization_zonkey import WHITESPACE_BYTES

WHITESPACE = frozenset(WHITESPACE_BYTES)


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


def without_document_starts(rows: list[list[int]]) -> list[list[int]]:
    """Boundary lists without position 0: every level forces a boundary at each document's first byte, which is also
    a word and a sentence start, so scoring it would count a free hit ("inner" scores)."""
    return [[position for position in row if position] for row in rows]


def byte_accuracy(reconstructed: list[torch.Tensor], input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[int, int]:
    """(correct bytes, total bytes): position-wise matches of each reconstruction against its input row;
    missing or extra bytes count as errors (total = max of the two lengths)."""
    correct = total = 0
    for row, ids, mask in zip(reconstructed, input_ids, attention_mask.bool()):
        target = ids[mask].to(row.device)
        n = min(len(row), len(target))
        correct += int((row[:n] == target[:n]).sum())
        total += max(len(row), len(target))
    return correct, total


def edit_distance(reconstructed: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Levenshtein edits between each reconstruction and its input row, summed (CER = edits / real bytes)."""
    return sum(Levenshtein.distance(bytes(row.tolist()), bytes(ids[mask].tolist()))
               for row, ids, mask in zip(reconstructed, input_ids, attention_mask.bool()))


SENTENCE_ENDS = frozenset(b".!?")


def sentence_starts(data: bytes) -> list[int]:
    """Positions of the first byte of each sentence: 0, and the first non-space byte after ". ", "! " or "? "."""
    starts = [0] if data else []
    for i in range(1, len(data)):
        if data[i] in WHITESPACE or data[i - 1] not in WHITESPACE:
            continue
        j = i - 1
        while j >= 0 and data[j] in WHITESPACE:
            j -= 1
        if j >= 0 and data[j] in SENTENCE_ENDS:
            starts.append(i)
    return starts


def average_precision(scores: list[float], labels: list[bool]) -> float:
    """Area under the precision-recall curve (average precision, threshold free): the mean, over positives
    ranked by descending score, of the precision at their rank. Ties are ranked positives last (pessimistic)."""
    positives = sum(labels)
    if positives == 0:
        return 0.0
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / positives


def over_segmentation(predicted: int, gold: int) -> float:
    """OS = #predicted / #gold - 1 (0: as many boundaries as the reference; > 0: too many)."""
    return predicted / gold - 1.0 if gold else 0.0


def r_value(hit_rate: float, over_seg: float) -> float:
    """R-value 1 - (|r1| + |r2|) / 2, r1 = sqrt((1 - HR)^2 + OS^2), r2 = (-OS + HR - 1) / sqrt(2); 1 is perfect."""
    r1 = math.sqrt((1.0 - hit_rate) ** 2 + over_seg**2)
    r2 = (-over_seg + hit_rate - 1.0) / math.sqrt(2.0)
    return 1.0 - (abs(r1) + abs(r2)) / 2.0


def segment_lengths(starts: list[int], length: int) -> list[int]:
    """Lengths of the segments that begin at `starts` in a text of `length` bytes (the last runs to the end)."""
    ordered = sorted(set(starts))
    return [end - start for start, end in zip(ordered, ordered[1:] + [length])]


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in bits, elementwise (0 at p = 0 or 1)."""
    p = p.double().clamp(1e-12, 1 - 1e-12)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation ((0, 0) for no values): the one spread of every report."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def mean_and_cv(values: list[float]) -> tuple[float, float]:
    """Mean and coefficient of variation (std / mean, population std)."""
    mean, std = mean_std(values)
    return mean, (std / mean if mean else 0.0)
