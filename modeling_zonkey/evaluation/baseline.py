"""The flat baseline of our comparisons: a character-level (byte) autoregressive transformer, GPT-2 style.

It reads the same byte ids as Zonkey (vocabulary 257, pad 256) and is sized to a target parameter count,
so that speed, memory and quality are compared at equal size. It is a plain transformers
`GPT2LMHeadModel`: its `generate()` uses the library's key/value cache.
"""

import hashlib
import json
from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel

from ..tokenization_zonkey import PAD_TOKEN_ID, VOCAB_SIZE

HEAD_DIM = 32


def baseline_config(num_parameters: int, context: int = 1024, vocab_size: int = VOCAB_SIZE,
                    pad_token_id: int = PAD_TOKEN_ID) -> GPT2Config:
    """The GPT-2 config whose parameter count is closest to the target, among usual shapes: 2..24 layers,
    width a multiple of 32 between 32 and 64 times the depth (nanoGPT's are 48-64x)."""
    if num_parameters < 50_000:
        raise ValueError(f"num_parameters = {num_parameters} is too small for a transformer baseline (>= 50,000).")

    def count(layers: int, width: int) -> int:  # embeddings (tied head) + blocks + final LayerNorm
        return (vocab_size + context) * width + layers * (12 * width * width + 13 * width) + 2 * width

    best = min(((layers, width) for layers in range(2, 25)
                for width in range(32 * layers, 64 * layers + 1, HEAD_DIM)),
               key=lambda lw: (abs(count(*lw) - num_parameters), -lw[0]))
    layers, width = best
    return GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=width, n_layer=layers,
                      n_head=width // HEAD_DIM, bos_token_id=pad_token_id, eos_token_id=pad_token_id,
                      pad_token_id=pad_token_id)


def char_baseline(num_parameters: int, context: int = 1024) -> GPT2LMHeadModel:
    """A freshly initialised byte-level GPT-2 of about `num_parameters` parameters."""
    return GPT2LMHeadModel(baseline_config(num_parameters, context))


def baseline_training(folder: str | Path) -> dict | None:
    """How long the baseline saved in `folder` was trained, from the train_results.json of examples/train_baseline.py:
    {"minutes", "steps" (both every stage's when it continued another baseline), "bits_per_byte" (validation)};
    None without that record."""
    record = Path(folder) / "train_results.json"
    if not record.is_file():
        return None
    history = json.loads(record.read_text())
    return {"minutes": history.get("total_train_minutes", history.get("train_minutes")),
            "steps": history.get("total_completed_steps", history.get("completed_steps")),
            "bits_per_byte": history.get("validation_bits_per_byte")}


def held_out_digest(documents: list[bytes]) -> str:
    """SHA-256 of the held-out documents (each with its length), as evaluation.json records them."""
    digest = hashlib.sha256()
    for document in documents:
        digest.update(len(document).to_bytes(8, "little") + document)
    return digest.hexdigest()


def baseline_length(generation: dict) -> int:
    """How many bytes the baseline writes per sample: as many as Zonkey's samples held on average (at least 1)."""
    return max(1, round(generation["samples"]["mean_bytes"]["mean"]))


def recorded_baseline(path: str | Path, documents: list[bytes], settings, judge: str | None,
                      training_corpus: str) -> dict:
    """The baseline column of an earlier evaluation (its evaluation.json), to stand next to a new model's when the
    baseline's weights are not at hand. A ValueError, before any work, unless that evaluation judged its baseline on
    the same held-out documents (their SHA-256 where recorded, else their count and bytes), with the same seeds,
    samples per seed, sample length setting (max_new_tokens), judge and training corpus (where recorded: the
    real-word and Mem columns count against it); check_recorded_length checks the samples' mean length once this
    model's are known. settings: suite.EvaluationSettings. The dict gets "recorded_in" (the evaluation that judged
    the column, kept through later reuses), "recorded_with" (the model that evaluation was of) and "sample_length"
    (the bytes asked of the baseline)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--baseline_results {path}: not a readable evaluation.json ({error}).") from error
    baseline = record.get("baseline_generation") if isinstance(record, dict) else None
    if not baseline:
        raise ValueError(f"--baseline_results {path} holds no baseline column: evaluate with --baseline_model first.")
    generation = record.get("generation") or {}
    wanted = {"documents": len(documents), "bytes": sum(len(d) for d in documents), "judge": judge,
              "seeds": list(settings.seeds), "samples_per_seed": settings.samples_per_seed,
              "max_new_tokens": settings.max_new_tokens}
    found = {"documents": record.get("documents"), "bytes": record.get("bytes"), "judge": record.get("judge"),
             "seeds": baseline.get("seeds"), "samples_per_seed": baseline.get("samples_per_seed"),
             "max_new_tokens": generation.get("max_new_tokens")}
    for key, value in (("held_out_sha256", held_out_digest(documents)), ("training_corpus", training_corpus)):
        if record.get(key) is not None:  # (evaluations written before these were recorded)
            wanted[key], found[key] = value, record[key]
    changed = [f"{key} {found[key]!r} there, {wanted[key]!r} here" for key in wanted if found[key] != wanted[key]]
    if changed:
        raise ValueError(f"--baseline_results {path} was measured otherwise ({'; '.join(changed)}): evaluate with "
                         "the same held-out text, seeds, samples per seed, --max_new_tokens, judge and training "
                         "corpus, or with --baseline_model.")
    try:
        length = baseline.get("sample_length") or baseline_length(generation)
    except (KeyError, TypeError) as error:
        raise ValueError(f"--baseline_results {path} does not say how long its samples were.") from error
    return dict(baseline, recorded_in=baseline.get("recorded_in", str(path)),
                recorded_with=baseline.get("recorded_with", record.get("model")), sample_length=length)


def check_recorded_length(baseline: dict, generation: dict) -> None:
    """A ValueError unless a recorded baseline (recorded_baseline) wrote samples of the length this evaluation's
    baseline would (baseline_length): one window per sample gives each model its own mean length."""
    ours = baseline_length(generation)
    if baseline["sample_length"] != ours:
        raise ValueError(f"the recorded baseline's samples are {baseline['sample_length']} bytes long and this "
                         f"model's {ours}: samples of one window each differ in length between models; evaluate "
                         "both with --max_new_tokens, or the baseline again with --baseline_model.")
