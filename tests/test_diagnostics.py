"""Collapse diagnostics: pairwise cosine, p_bos saturation, the one-decode curve against noise level, and a micro
run whose decoder still tells segments apart at t = 0.5 (the first checkpoint's decoder emitted one vector there)."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.diagnostics import (
    bos_saturation,
    byte_distribution,
    denoiser_curve,
    mean_pairwise_cosine,
)

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
    assert set(curve["level0"]["t=0"]) == {"accuracy", "true_byte_probability", "expected_accuracy",
                                           "pairwise_cosine", "target_pairwise_cosine"}
    assert set(curve["level1"]["t=1"]) == {"cosine", "pairwise_cosine", "target_pairwise_cosine"}
    for name in ("accuracy", "true_byte_probability", "expected_accuracy"):
        assert 0.0 <= curve["level0"]["t=0"][name] <= 1.0
    again = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 1.0), seed=0)
    assert again == curve  # seeded


_TRAINED = {}


def _trained_one_level_model(tokenizer) -> ZonkeyModel:
    """A one-level micro model after 200 steps on TEXTS (trained once per session, returned in eval mode)."""
    if "model" not in _TRAINED:
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
        _TRAINED["model"] = model.eval()
    return _TRAINED["model"]


def test_a_short_run_decodes_distinct_vectors_at_half_noise(tokenizer):
    """The decoder is trained at every t: after a short run of a one-level model on a few sentences, one decode
    at t = 0.5 gets most bytes right and its vectors are as varied as the clean bytes' (the first checkpoint's
    decoder gave 16% of bytes and one vector for everything, pairwise cosine 1.000, at t >= 0.3)."""
    model = _trained_one_level_model(tokenizer)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    curve = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 0.5), seed=0)["level0"]
    assert curve["t=0"]["accuracy"] > 0.85, curve
    half = curve["t=0.5"]
    assert half["accuracy"] > 0.7, curve
    assert half["pairwise_cosine"] < half["target_pairwise_cosine"] + 0.15, curve


def test_a_byte_drawn_from_the_decoders_distribution_is_right_as_often_as_true_byte_probability_says(tokenizer):
    """true_byte_probability is what a sampler that ends in a draw from the model's posterior can expect: bytes drawn
    from byte_distribution (200 draws per position, seeded) hit the true byte that often. On a trained model the draw
    is right less often than the nearest byte at t = 0.5, which is why a sampler that moves from the posterior's mode
    (one decode) toward a draw from it loses text with every step."""
    model = _trained_one_level_model(tokenizer)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    curve = denoiser_curve(model, batch["input_ids"], batch["attention_mask"], (0.0, 0.5), seed=0)["level0"]
    with torch.no_grad():
        output = model(**batch).levels[0]
        latents = output.latents[output.latent_mask]
        decoded = model.levels[0].decoder(latents, torch.zeros(len(latents))).sequence  # t = 0: no noise drawn
        p = byte_distribution(model, decoded)
    true_ids = output.segments.gather(batch["input_ids"])
    weight = output.segments.ownership
    draws = torch.multinomial(p.flatten(0, 1), 200, replacement=True, generator=torch.Generator().manual_seed(0))
    hits = (draws.view(*weight.shape, 200) == true_ids[..., None]).float().mean(-1)
    drawn = float((hits * weight).sum() / weight.sum())
    assert drawn == pytest.approx(curve["t=0"]["true_byte_probability"], abs=0.01), curve
    assert p.sum(-1).sub(1).abs().max() < 1e-5
    half = curve["t=0.5"]
    assert half["true_byte_probability"] < half["accuracy"] - 0.05, half
    assert curve["t=0"]["true_byte_probability"] > half["true_byte_probability"], curve
