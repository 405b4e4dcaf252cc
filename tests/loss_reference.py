"""The fixed-seed loss terms and gradient norms of a training step, as a refactor's yardstick (issue #12).

`python tests/loss_reference.py` recomputes them with the code as it is and writes tests/data/loss_reference.json;
do that only for a change that is meant to alter what the model computes, and say so in the commit. A speed
refactor must leave them equal to float tolerance (tests/test_loss_reference.py).
"""

import json
from pathlib import Path

import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "data" / "loss_reference.json"
TEXTS = [
    "The river flows north through the old town, past the mill and the church.",
    "In 1889 the railway station opened; by 1901 the village had grown to 2,400 people.",
    "Species of this genus live in shallow water.",
    "She wrote three albums, toured Europe twice and then returned to teaching music at the university.",
]
# Micro preset variants that reach every branch of the losses.
CASES = {
    "micro": {},
    "micro_all_negatives_single_step": {"infonce_negatives": "all", "ddmm_objective": "single_step"},
    "micro_no_denoiser_existence": {"denoiser_existence": False, "compressor_conv_norm": False},
    "micro_capped_decoder": {"max_decoded_segments": [16, 12]},
}
COMPONENTS = ("splitter", "compressor", "decoder", "stitcher", "masked_vector")


def compute(case: str, seed: int = 0) -> dict[str, float]:
    """Loss terms, total and per-component gradient norms of one training-mode forward + backward."""
    config = ZonkeyConfig.from_pretrained(str(ROOT / "configuration" / "zonkey-micro.json"), **CASES[case])
    torch.manual_seed(seed)
    model = ZonkeyModel(config).train()
    batch = ZonkeyTokenizer()(TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(seed + 1)
    output = model(batch["input_ids"], batch["attention_mask"], return_loss=True)
    output.loss.backward()
    values = {name: float(value.detach()) for name, value in output.loss_terms.items()}
    values["loss"] = float(output.loss.detach())
    values["grad/byte_embeddings"] = float(model.byte_embeddings.weight.grad.norm())
    for index, level in enumerate(model.levels):
        for component in COMPONENTS:
            module = getattr(level, component)
            if module is None:
                continue
            grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
            values[f"grad/level{index}/{component}"] = float(torch.cat(grads).norm()) if grads else 0.0
    return values


if __name__ == "__main__":
    torch.set_num_threads(1)
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({case: compute(case) for case in CASES}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
