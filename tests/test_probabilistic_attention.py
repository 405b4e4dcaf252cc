"""Probabilistic Attention: the bias B, sharp existence == hard key-padding masking, soft gradients, no NaN."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey.probabilistic_attention import PAEncoder, ProbabilisticAttention, existence_bias

HIDDEN, HEADS = 16, 2
LENGTHS = [7, 4, 1]  # a batch of documents with different lengths
L = max(LENGTHS)


def sharp_existence(lengths, length, pad_value=0.0):
    e = torch.full((len(lengths), length), pad_value)
    for row, n in enumerate(lengths):
        e[row, :n] = 1.0
    return e


def key_padding_mask(lengths, length):
    """(B, L) bool: True on real keys."""
    return torch.arange(length)[None] < torch.tensor(lengths)[:, None]


def reference_attention(attn, x, positions, keep, use_sdpa):
    """Plain multi-head attention with a boolean key-padding mask (True = attend): (output, weights)."""
    q = attn._heads(attn.q_proj(x) + attn._codes(positions, x.dtype))
    k = attn._heads(attn.k_proj(x) + attn._codes(positions, x.dtype))
    v = attn._heads(attn.v_proj(x))
    mask = keep[:, None, None, :]  # (B, 1, 1, Lk)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    if use_sdpa:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = weights @ v
    gate = torch.sigmoid(attn.gate_proj(x)).transpose(1, 2).unsqueeze(-1)
    out = (out * gate).transpose(1, 2).flatten(2)
    return attn.o_proj(out), weights


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return ProbabilisticAttention(HIDDEN, HEADS).eval()


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), L, HIDDEN, generator=generator)
    positions = torch.arange(L).expand(len(LENGTHS), L)
    return x, positions


# ------------------------------------------------------------------------------------------ the bias B
def test_bias_formula_hand_made():
    e = torch.tensor([[1.0, 0.5, 0.25, 0.8, 0.0]])
    bias = existence_bias(e, e)
    assert bias.shape == (1, 1, 5, 5)
    b = bias[0, 0]
    log = torch.log(e[0])
    for q in range(4):  # existing queries
        for k in range(5):
            if k == 4:
                assert b[q, k] == float("-inf"), (q, k)  # e_k = 0: hard masked
            elif k <= q:
                assert b[q, k] == 0.0, (q, k)
            else:
                expected = min(0.0, float(log[k] - log[q]))
                assert b[q, k].item() == pytest.approx(expected, abs=1e-6), (q, k)
    # spot values: later key less likely than the query -> log ratio; more likely -> 0
    assert b[0, 1].item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert b[1, 2].item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert b[0, 2].item() == pytest.approx(math.log(0.25), abs=1e-6)
    assert b[2, 3].item() == 0.0  # e_k = 0.8 > e_q = 0.25
    assert b[1, 3].item() == 0.0
    assert b[0, 3].item() == pytest.approx(math.log(0.8), abs=1e-6)


def test_bias_matches_formula_random():
    generator = torch.Generator().manual_seed(3)
    eq = torch.rand(2, 6, generator=generator) * 0.98 + 0.02
    ek = torch.rand(2, 6, generator=generator) * 0.98 + 0.02
    bias = existence_bias(eq, ek)[:, 0]
    expected = torch.zeros(2, 6, 6)
    for b in range(2):
        for q in range(6):
            for k in range(q + 1, 6):
                expected[b, q, k] = min(0.0, math.log(ek[b, k]) - math.log(eq[b, q]))
    torch.testing.assert_close(bias, expected, atol=1e-5, rtol=0)


def test_bias_cross_attention_shifted_key_frame():
    """Stitcher refiner: keys of seq2 sit at positions gap + j in seq1's frame; 'later' is judged there."""
    e1 = torch.tensor([[1.0, 0.9, 0.6, 0.3, 0.1]])
    e2 = torch.tensor([[1.0, 0.7, 0.2, 0.05, 0.01]])
    gap = 2
    own = torch.arange(5)[None]
    shifted = own + gap
    bias = existence_bias(e1, e2, own, shifted)[0, 0]
    for q in range(5):
        for k in range(5):
            if gap + k > q:
                expected = min(0.0, math.log(e2[0, k]) - math.log(e1[0, q]))
            else:
                expected = 0.0
            assert bias[q, k].item() == pytest.approx(expected, abs=1e-5), (q, k)
    # the frame matters: key 1 of seq2 sits at position 3, after query 1, so it is down-weighted by
    # e2_1 / e1_1, whereas in an unshifted frame (key 1 == query 1) it would not be.
    unshifted = existence_bias(e1, e2)[0, 0]
    assert bias[1, 1].item() == pytest.approx(math.log(0.7 / 0.9), abs=1e-5)
    assert unshifted[1, 1].item() == 0.0
    assert not torch.equal(bias, unshifted)


def test_cross_attention_uses_key_positions(attention):
    """ProbabilisticAttention puts the keys' sinusoid codes at the given (shifted) positions."""
    generator = torch.Generator().manual_seed(4)
    xq, xk = torch.randn(2, 5, HIDDEN, generator=generator), torch.randn(2, 5, HIDDEN, generator=generator)
    own = torch.arange(5).expand(2, 5)
    shifted = own + torch.tensor([[2], [3]])
    e1, e2 = torch.ones(2, 5), torch.ones(2, 5)
    with torch.no_grad():
        out = attention(xq, xk, existence_bias(e1, e2, own, shifted), own, shifted, return_weights=True)
        q = attention._heads(attention.q_proj(xq) + attention._codes(own, xq.dtype))
        k = attention._heads(attention.k_proj(xk) + attention._codes(shifted, xk.dtype))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attention.head_dim), dim=-1)
        unshifted = attention(xq, xk, existence_bias(e1, e2), own, own, return_weights=True)
    torch.testing.assert_close(out.attention_weights, weights, atol=1e-6, rtol=1e-5)
    assert (out.attention_weights - unshifted.attention_weights).abs().max() > 1e-3


# -------------------------------------------------------------------- sharp existence == hard masking
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_sharp_existence_equals_key_padding_mask(attention, inputs, use_sdpa):
    x, positions = inputs
    e = sharp_existence(LENGTHS, L)
    keep = key_padding_mask(LENGTHS, L)
    with torch.no_grad():
        out = attention(x, x, existence_bias(e, e), positions, positions, return_weights=not use_sdpa)
        ref_out, ref_weights = reference_attention(attention, x, positions, keep, use_sdpa)
    for row, n in enumerate(LENGTHS):  # real query rows (padding rows are zeroed by the encoder)
        torch.testing.assert_close(out.hidden_states[row, :n], ref_out[row, :n], atol=1e-6, rtol=1e-5)
        if not use_sdpa:
            torch.testing.assert_close(out.attention_weights[row, :, :n], ref_weights[row, :, :n], atol=1e-7, rtol=1e-6)
            assert (out.attention_weights[row, :, :n, n:] == 0).all()
    if use_sdpa:
        assert out.attention_weights is None


def test_weights_path_equals_sdpa_path(attention, inputs):
    x, positions = inputs
    generator = torch.Generator().manual_seed(5)
    e = torch.cumprod(torch.rand(len(LENGTHS), L, generator=generator) * 0.5 + 0.5, dim=1)
    bias = existence_bias(e, e)
    with torch.no_grad():
        a = attention(x, x, bias, positions, positions, return_weights=False).hidden_states
        b = attention(x, x, bias, positions, positions, return_weights=True)
    torch.testing.assert_close(a, b.hidden_states, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.attention_weights.sum(-1), torch.ones(len(LENGTHS), HEADS, L))
    # the weights are softmax(QK^T / sqrt(d_h) + B): later keys are down-weighted by e_k / e_q
    with torch.no_grad():
        q = attention._heads(attention.q_proj(x) + attention._codes(positions, x.dtype))
        k = attention._heads(attention.k_proj(x) + attention._codes(positions, x.dtype))
        scores = q @ k.transpose(-1, -2) / math.sqrt(attention.head_dim)
    later = torch.arange(L)[None, :] > torch.arange(L)[:, None]
    ratio = torch.where(later, (e[:, None, :] / e[:, :, None]).clamp(max=1.0), torch.ones(()))
    expected = torch.softmax(scores, -1) * ratio[:, None]
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(b.attention_weights, expected, atol=1e-6, rtol=1e-5)


def test_eps_existence_on_padding_close_to_hard_mask(attention, inputs):
    x, positions = inputs
    e = sharp_existence(LENGTHS, L, pad_value=1e-6)
    keep = key_padding_mask(LENGTHS, L)
    with torch.no_grad():
        out = attention(x, x, existence_bias(e, e), positions, positions, return_weights=True)
        ref_out, ref_weights = reference_attention(attention, x, positions, keep, use_sdpa=True)
    for row, n in enumerate(LENGTHS):
        torch.testing.assert_close(out.hidden_states[row, :n], ref_out[row, :n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.attention_weights[row, :, :n], ref_weights[row, :, :n], atol=1e-4, rtol=0)
        if n < L:  # the padding keys are weighted ~ eps, not exactly 0
            leak = out.attention_weights[row, :, :n, n:].sum(-1)
            assert (leak > 0).all() and (leak < 1e-4).all()


def test_encoder_sharp_existence_equals_unpadded_rows():
    """With sharp existence, each row of a padded batch equals the encoder run on that row alone."""
    torch.manual_seed(6)
    encoder = PAEncoder(HIDDEN, HEADS, 2, 2).eval()
    x = torch.randn(len(LENGTHS), L, HIDDEN)
    e = sharp_existence(LENGTHS, L)
    with torch.no_grad():
        batched = encoder(x, e)
        for row, n in enumerate(LENGTHS):
            alone = encoder(x[row : row + 1, :n], torch.ones(1, n))
            torch.testing.assert_close(batched[row, :n], alone[0], atol=1e-5, rtol=1e-5)
            assert (batched[row, n:] == 0).all()


# --------------------------------------------------------------------------- soft existence: gradients
def test_gradient_reaches_existence(attention, inputs):
    x, positions = inputs
    generator = torch.Generator().manual_seed(7)
    p = torch.rand(len(LENGTHS), L, generator=generator) * 0.4 + 0.05
    e = torch.cumprod(1 - p, dim=1).requires_grad_(True)  # soft, decreasing existence
    out = attention(x, x, existence_bias(e, e), positions, positions).hidden_states
    (out * torch.randn(out.shape, generator=generator)).sum().backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()
    assert e.grad.abs().sum() > 1e-4
    # every row of the batch gets a gradient (beyond the first key, which biases nothing)
    assert (e.grad[:, 1:].abs().sum(1) > 0).all()


def test_gradient_reaches_existence_through_encoder():
    torch.manual_seed(8)
    encoder = PAEncoder(HIDDEN, HEADS, 1, 2)
    x = torch.randn(2, 6, HIDDEN)
    e = torch.tensor([[1.0, 0.9, 0.7, 0.4, 0.2, 0.1], [1.0, 0.95, 0.5, 0.3, 0.0, 0.0]], requires_grad=True)
    out = encoder(x, e)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(e.grad).all()
    assert e.grad[0, 1:].abs().min() > 0
    assert e.grad[1, 1:4].abs().min() > 0


EXTREMES = [0.0, 1e-12, 1.0 - 1e-12, 1.0]


@pytest.mark.parametrize("seed", range(4))
def test_no_nan_at_extreme_existence(seed):
    torch.manual_seed(seed)
    encoder = PAEncoder(HIDDEN, HEADS, 2, 2)
    attention = ProbabilisticAttention(HIDDEN, HEADS)
    generator = torch.Generator().manual_seed(100 + seed)
    choice = torch.randint(len(EXTREMES), (3, 8), generator=generator)
    values = torch.tensor(EXTREMES, dtype=torch.float64)[choice].float()
    values[0] = torch.tensor([1.0, 1 - 1e-12, 1e-12, 0.0, 1.0, 1e-12, 0.0, 1.0])  # every value appears
    values[1, 0] = 0.0  # a document whose first key does not exist
    e = values.clone().requires_grad_(True)
    x = torch.randn(3, 8, HIDDEN, requires_grad=True)
    positions = torch.arange(8).expand(3, 8)
    out_encoder = encoder(x, e)
    out_attention = attention(x, x, existence_bias(e, e), positions, positions).hidden_states
    out_weights = attention(x, x, existence_bias(e, e), positions, positions, return_weights=True)
    assert torch.isfinite(out_encoder).all() and torch.isfinite(out_attention).all()
    assert torch.isfinite(out_weights.hidden_states).all() and torch.isfinite(out_weights.attention_weights).all()
    assert (out_encoder[values == 0] == 0).all()  # non-existing queries come out as zeros
    loss = out_encoder.square().sum() + out_attention.square().sum() + out_weights.hidden_states.square().sum()
    loss.backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(x.grad).all()
    for module in (encoder, attention):
        for name, parameter in module.named_parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
