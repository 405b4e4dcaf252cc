"""Statistics of generated text, as the diffusion-LM literature reports them (data-and-evaluation.md).

Words are maximal runs of letters, digits and apostrophes, lower-cased; sentences end at ".", "!" or "?".
    entropy: of the character (or word) unigram distribution, in bits (low = degenerate repetition)
    Div = prod_{n=2..4} (unique n-grams / total n-grams) over the samples' word n-grams (1 = no repetition)
    Mem = share of the samples' word 4-grams that occur in the training text
"""

import math
import re
from collections import Counter
from collections.abc import Iterable

from .metrics import mean_std

WORD = re.compile(r"[\w']+")
SENTENCE_END = re.compile(r"[.!?]+")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def entropy_bits(items: Iterable) -> float:
    counts = Counter(items)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def diversity(texts: list[str]) -> float:
    """Div = prod over n = 2..4 of unique / total word n-grams, pooled over the texts (each text's own n-grams)."""
    result = 1.0
    for n in (2, 3, 4):
        grams = [g for text in texts for g in ngrams(words(text), n)]
        result *= len(set(grams)) / len(grams) if grams else 1.0
    return result


def training_ngrams(texts: Iterable[str], n: int = 4) -> set[int]:
    """Hashes of the word n-grams of the training text (for Mem)."""
    return {hash(g) for text in texts for g in ngrams(words(text), n)}


def memorisation(texts: list[str], seen: set[int], n: int = 4) -> float:
    """Mem: share of the texts' word n-grams found in the training n-grams."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return sum(hash(g) in seen for g in grams) / len(grams) if grams else 0.0


LONG_WORD = 5  # characters: the words this long or longer (mostly content words), whose share is reported apart


def vocabulary_share(texts: list[str], vocabulary: set[str], min_length: int = 1) -> float:
    """Share of the texts' words (those of at least min_length characters) found in the training vocabulary."""
    tokens = [w for text in texts for w in words(text) if len(w) >= min_length]
    return sum(w in vocabulary for w in tokens) / len(tokens) if tokens else 0.0


def long_word_share(texts: list[str]) -> float:
    """Share of the texts' words that have at least LONG_WORD characters."""
    tokens = [w for text in texts for w in words(text)]
    return sum(len(w) >= LONG_WORD for w in tokens) / len(tokens) if tokens else 0.0


def length_statistics(texts: list[str]) -> dict[str, float]:
    """Mean and std of word length (characters) and sentence length (words)."""
    word_lengths = [len(w) for text in texts for w in words(text)]
    sentence_lengths = [len(words(s)) for text in texts for s in SENTENCE_END.split(text) if words(s)]

    (wm, ws), (sm, ss) = mean_std(word_lengths), mean_std(sentence_lengths)
    return {"word_length_mean": wm, "word_length_std": ws, "sentence_length_mean": sm, "sentence_length_std": ss}


def text_statistics(texts: list[str], vocabulary: set[str], seen: set[int]) -> dict[str, float]:
    """Every statistic of a set of texts (samples or real text)."""
    return {
        "char_entropy": entropy_bits(ch for text in texts for ch in text),
        "word_entropy": entropy_bits(w for text in texts for w in words(text)),
        "vocabulary_share": vocabulary_share(texts, vocabulary),
        "vocabulary_share_long": vocabulary_share(texts, vocabulary, LONG_WORD),  # real words among the long ones
        "long_word_share": long_word_share(texts),
        "div": diversity(texts),
        "mem": memorisation(texts, seen),
        "mean_bytes": sum(len(t.encode("utf-8")) for t in texts) / max(len(texts), 1),
        **length_statistics(texts),
    }
