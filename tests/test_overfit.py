"""A micro Zonkey memorises two sentences: the loss falls and encode -> decode (and generate() at t = 0) gives
them back byte for byte."""

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
    losses, level1, decoded = [], [], []
    for step in range(1, 1001):
        model.train()
        out = model(**batch, return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        level1.append(out.loss_terms["level1/reconstruction"].item())
        if step % 50 == 0 and step >= 200:  # level 1 trains for at least 200 steps (its loss: 0.27x by then)
            model.eval()
            # bytes -> level-0 latents -> bytes, through the level-0 decoder and stitcher
            decoded = tokenizer.batch_decode(model.reconstruct(**batch, from_level=0), skip_special_tokens=True)
            if decoded == SENTENCES:
                break
    assert decoded == SENTENCES, f"level-0 reconstruction not exact after {len(losses)} steps: {decoded}"
    # generate() at noise level t = 0 from the level-0 latents gives the training sentences back
    generated = model.generate(**batch, noise_level=0.0, level=0)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == SENTENCES
    start, end = sum(losses[:5]) / 5, sum(losses[-20:]) / 20
    assert end < 0.2 * start, f"total loss fell only from {start:.2f} to {end:.2f}"
    # level 1 learns to reconstruct the level-0 latents it reads (InfoNCE against the other latents)
    start1, end1 = sum(level1[:5]) / 5, sum(level1[-20:]) / 20
    assert end1 < 0.6 * start1, f"level-1 reconstruction fell only from {start1:.2f} to {end1:.2f}"
