"""The flat baseline of our comparisons: a character-level (byte) autoregressive transformer, GPT-2 style.

It reads the same byte ids as Zonkey (vocabulary 257, pad 256) and is sized to a target parameter count,
so that speed, memory and quality are compared at equal size. It is a plain transformers
`GPT2LMHeadModel`: its `generate()` uses the library's key/value cache.
"""

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
