"""Decoder: time embedding, decompressor (causal, with a key/value cache), PA denoiser and existence head.

The diffusion losses that train it at every noise level are X."""

import math

import pytest
import torch

from modeling_zonkey.decoder import CausalBlock, Decoder, Decompressor, TimeEmbedding
from modeling_zonkey.sphere import expected_norm, sinusoid, to_sphere

pytestmark = pytest.mark.usefixtures("single_thread")

D, HEADS, C, L = 16, 2, 2, 8


def make_decoder(seed=0, denoiser_existence=True):
    torch.manual_seed(seed)
    decoder = Decoder(D, HEADS, C, L, 1, 2, 2, "interpolate", denoiser_existence)
    torch.nn.init.normal_(decoder.time.clean)
    torch.nn.init.normal_(decoder.time.noisy)
    return decoder.eval()


def test_decoder_shapes_sphere_and_existence():
    decoder = make_decoder()
    z = to_sphere(torch.randn(5, C * D))
    out = decoder(z, torch.rand(5))
    assert out.sequence.shape == (5, L, D) and out.existence.shape == (5, L)
    torch.testing.assert_close(out.sequence.norm(dim=-1), torch.full((5, L), expected_norm(D)))
    assert (out.existence[:, 0] == 1).all() and (out.existence[:, 1:] <= out.existence[:, :-1]).all()
    assert (out.existence > 0).all()


@torch.no_grad()
def test_the_predicted_existence_masks_the_denoiser():
    """The denoiser reads the draft existence through PA: a different existence head changes the decoded vectors
    (with denoiser_existence=False, the first checkpoint's plain encoder, only the existence changes)."""
    z = to_sphere(torch.randn(4, C * D, generator=torch.Generator().manual_seed(1)))
    t = torch.full((4,), 0.3)
    for flag in (True, False):
        decoder = make_decoder(denoiser_existence=flag)
        before = decoder(z, t)
        decoder.existence_head.weight.mul_(-40.0)  # a much shorter (or longer) predicted segment
        after = decoder(z, t)
        assert (after.existence - before.existence).abs().max() > 0.1
        changed = (after.sequence - before.sequence).abs().max().item()
        assert (changed > 1e-2) if flag else (changed == 0.0), (flag, changed)


def perturb(module, seed):
    """Seeded noise on every parameter (LayerNorm weights and biases off their init values)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module


def full_causal_pass(decompressor, sequence):
    """Every layer over the whole sequence at once, without a cache (is_causal attention) -> normalised outputs."""
    x = sequence
    for layer in decompressor.layers:
        x, _ = layer(x, 0, None)
    return decompressor.norm(x)


@torch.no_grad()
@pytest.mark.parametrize("prompt_length", [1, 3])
def test_cached_decompressor_equals_a_full_causal_pass(prompt_length):
    """The decompressor emits L vectors one at a time with a key/value cache, each step reading the previous
    output. Teacher-forcing its own outputs, one causal pass over [prompt, y_1 .. y_{L-1}] gives the same L vectors
    at positions P-1 .. P+L-2 (and the prompt's first outputs do not depend on what follows)."""
    torch.manual_seed(0)
    decompressor = perturb(Decompressor(D, HEADS, 2, L, 2), 1).eval()
    prompt = torch.randn(3, prompt_length, D, generator=torch.Generator().manual_seed(2))
    emitted = decompressor(prompt)
    assert emitted.shape == (3, L, D)
    full = full_causal_pass(decompressor, torch.cat([prompt, emitted[:, :-1]], dim=1))
    torch.testing.assert_close(full[:, prompt_length - 1 :], emitted, atol=1e-5, rtol=1e-5)
    # causal: replacing the later inputs changes nothing before them
    other = torch.cat([prompt, torch.randn(3, L - 1, D, generator=torch.Generator().manual_seed(3))], dim=1)
    torch.testing.assert_close(full_causal_pass(decompressor, other)[:, :prompt_length], full[:, :prompt_length],
                               atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_causal_block_cache_gives_the_keys_values_and_outputs_of_one_pass():
    """A causal block run over a prefix, then token by token with the cache, equals one causal pass over the whole
    sequence: the same outputs and the same cached keys and values (position codes included)."""
    torch.manual_seed(4)
    block = perturb(CausalBlock(D, HEADS, 2), 5).eval()
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(6))
    whole, (k_whole, v_whole) = block(x, 0, None)
    out, cache = block(x[:, :3], 0, None)
    steps = [out]
    for position in range(3, 7):
        y, cache = block(x[:, position : position + 1], position, cache)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[0], k_whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cache[1], v_whole, atol=1e-6, rtol=1e-6)
    assert cache[0].shape == (2, HEADS, 7, D // HEADS)
    # precomputed codes (what the decompressor passes) change nothing
    codes = sinusoid(torch.arange(16), D // HEADS)
    torch.testing.assert_close(block(x, 0, None, codes)[0], whole, atol=0, rtol=0)


@torch.no_grad()
def test_the_decoder_prompt_is_tau_then_the_latent_vectors_plus_tau():
    """The decompressor reads [tau(t); z_1 + tau(t); ...; z_C + tau(t)] (C + 1 tokens of width d)."""
    decoder = make_decoder(7)
    z = to_sphere(torch.randn(2, C * D, generator=torch.Generator().manual_seed(8)))
    t = torch.tensor([0.2, 0.9])
    prompts = []
    handle = decoder.decompressor.register_forward_hook(lambda module, args, output: prompts.append(args[0]))
    try:
        decoder(z, t)
    finally:
        handle.remove()
    tau = (1 - t)[:, None] * decoder.time.clean + t[:, None] * decoder.time.noisy
    expected = torch.cat([tau[:, None], z.view(2, C, D) + tau[:, None]], dim=1)
    torch.testing.assert_close(prompts[0], expected)


def test_time_embedding_interpolates_or_encodes():
    embedding = TimeEmbedding(D, "interpolate")
    torch.nn.init.normal_(embedding.clean)
    torch.nn.init.normal_(embedding.noisy)
    t = torch.tensor([0.0, 0.25, 1.0])
    out = embedding(t)
    torch.testing.assert_close(out[0], embedding.clean.detach(), atol=0, rtol=0)
    torch.testing.assert_close(out[2], embedding.noisy.detach(), atol=0, rtol=0)
    torch.testing.assert_close(out[1], 0.75 * embedding.clean.detach() + 0.25 * embedding.noisy.detach())
    torch.manual_seed(9)
    sinusoidal = TimeEmbedding(D, "sinusoidal")
    torch.testing.assert_close(sinusoidal(t), sinusoidal.mlp(sinusoid(t * 1000.0, D)))


def test_existence_is_the_survival_product_of_p_end():
    """e_hat_0 = 1, e_hat_j = prod_{k=1..j} (1 - p_end_k), p_end = sigmoid(w . y / sqrt(d) - 2)."""
    decoder = make_decoder(10)
    y = torch.randn(3, L, D, generator=torch.Generator().manual_seed(11)) * 4.0
    p_end = torch.sigmoid(decoder.existence_head(y).squeeze(-1) / math.sqrt(D) - 2.0)
    expected = torch.cat([torch.ones(3, 1), torch.cumprod(1 - p_end[:, 1:], dim=1)], dim=1)
    torch.testing.assert_close(decoder.existence(y), expected, atol=1e-6, rtol=1e-5)
    assert (expected[:, 1:] < expected[:, :-1]).all()  # strictly decreasing: each p_end > 0
