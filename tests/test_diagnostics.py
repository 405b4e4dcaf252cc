"""Collapse diagnostics: pairwise cosine, p_bos saturation, the one-decode curve against noise level, and a micro
run whose decoder still tells segments apart at t = 0.5 (the first checkpoint's decoder emitted one vector there)."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.diagnostics import bos_saturation, denoiser_curve, mean_pairwise_cosine

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["the cat sat on the mat.", "a dog ran far away.", "big fish swim in deep blue seas.", "old men read books."]


def test_mean_pairwise_cosine_of_identical_orthogonal_and_opposite_vectors():
    assert mean_pairwise_cosine(torch.ones(5, 3)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)) == pytest.approx(0.0, abs=1e-7)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


def test_bos_saturation_counts_real_positions_after_the_first(make_model, tokenizer):
    model = make_model(seed=0)
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    outputs = model(**batch).levels
    p = outputs[0].bos_probs.clone()
    p[0, 1:5] = 1.0  # saturated; position 0 (always 1) and padding do not count
    p[0, 5:7] = 1e-9
    outputs[0].bos_probs = p
    inner = outputs[0].valid.clone()
    inner[:, 0] = False
    expected = float(((p[inner] < 1e-4) | (p[inner] > 1 - 1e-4)).float().mean())
    assert bos_saturation(outputs)[0] == pytest.approx(expected) and expected >= 6 / inner.sum().item()


def test_denoiser_curve_keys_ranges_and_pure_noise(make_model, tokenizer):
    model = make_model(seed=1)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    curve = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 1.0), seed=0)
    assert set(curve) == {"level0", "level1"}
    assert set(curve["level0"]["t=0"]) == {"accuracy", "pairwise_cosine", "target_pairwise_cosine"}
    assert set(curve["level1"]["t=1"]) == {"cosine", "pairwise_cosine", "target_pairwise_cosine"}
    assert 0.0 <= curve["level0"]["t=0"]["accuracy"] <= 1.0
    again = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 1.0), seed=0)
    assert again == curve  # seeded


def test_a_short_run_decodes_distinct_vectors_at_half_noise(tokenizer):
    """The decoder is trained at every t: after a short run of a one-level model on a few sentences, one decode
    at t = 0.5 gets most bytes right and its vectors are as varied as the clean bytes' (the first checkpoint's
    decoder gave 16% of bytes and one vector for everything, pairwise cosine 1.000, at t >= 0.3)."""
    config = ZonkeyConfig(num_levels=1, hidden_size=[32], num_attention_heads=[2], window_length=[8],
                          num_cls_vectors=[2], compressor_layers=[1], decompressor_layers=[1], denoiser_layers=[1],
                          document_length=[64], max_decoded_segments=[64], level_weights=[1.0])
    torch.manual_seed(0)
    model = ZonkeyModel(config)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        model.train()
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    curve = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 0.5), seed=0)["level0"]
    assert curve["t=0"]["accuracy"] > 0.85, curve
    half = curve["t=0.5"]
    assert half["accuracy"] > 0.7, curve
    assert half["pairwise_cosine"] < half["target_pairwise_cosine"] + 0.15, curve
