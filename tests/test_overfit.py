"""A micro Zonkey memorises two sentences: the loss falls and encode -> decode gives them back byte for byte."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

SENTENCES = ["the cat sat.", "a dog ran."]

# One intra-op thread: the same numerics on every run of this machine type (and no OpenMP spin-waiting).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_micro_model_overfits_and_reconstructs_exactly():
    torch.manual_seed(0)
    config = ZonkeyConfig.from_pretrained("configuration/zonkey-micro.json")
    model = ZonkeyModel(config)
    tokenizer = ZonkeyTokenizer()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, decoded = [], {}
    for step in range(1, 1001):
        model.train()
        out = model(**batch, return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        if step % 50 == 0:
            model.eval()
            # from the level-0 latents (bytes -> words -> bytes) and from the top (level 1) down through both levels
            decoded = {level: tokenizer.batch_decode(model.reconstruct(**batch, from_level=level), skip_special_tokens=True)
                       for level in (0, 1)}
            if decoded[0] == SENTENCES and decoded[1] == SENTENCES:
                break
    assert decoded[0] == SENTENCES, f"level-0 reconstruction not exact after {len(losses)} steps: {decoded[0]}"
    assert decoded[1] == SENTENCES, f"top-level reconstruction not exact after {len(losses)} steps: {decoded[1]}"
    start, end = sum(losses[:5]) / 5, sum(losses[-20:]) / 20
    assert end < 0.2 * start, f"total loss fell only from {start:.2f} to {end:.2f}"
