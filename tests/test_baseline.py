"""The flat byte-level baseline is sized to a target parameter count and generates with its KV cache."""

import pytest
import torch

from modeling_zonkey.baseline import baseline_config, char_baseline


@pytest.mark.parametrize("target", [360_000, 2_177_686, 10_000_000])
def test_baseline_matches_the_target_size(target):
    model = char_baseline(target, context=256)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - target) / target < 0.1, (count, target)
    config = model.config
    assert config.vocab_size == 257 and config.pad_token_id == 256
    assert 32 * config.n_layer <= config.n_embd <= 64 * config.n_layer


def test_baseline_generates_bytes_with_a_cache():
    torch.manual_seed(0)
    model = char_baseline(200_000, context=64).eval()
    prompt = torch.tensor([[32, 116]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=256)
        plain = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=256)
    assert cached.shape == (1, 10) and torch.equal(cached, plain)


def test_too_small_baseline_is_refused():
    with pytest.raises(ValueError, match="too small"):
        baseline_config(1000)
