"""Vectors on spheres: nu(n), the projection, the 2 atanh(cos) logits, full precision and sinusoidal codes."""

import math

import pytest
import torch

from modeling_zonkey.sphere import cosine_logits, expected_norm, full_precision, sinusoid, to_sphere


def test_expected_norm_matches_closed_forms():
    assert expected_norm(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert expected_norm(2) == pytest.approx(math.sqrt(math.pi / 2))
    for n in (16, 64, 1024):
        assert expected_norm(n) == pytest.approx(math.sqrt(n - 0.5), rel=1e-3)


def test_to_sphere_keeps_the_direction_at_radius_nu():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 24, generator=generator) * torch.tensor([0.01, 1.0, 100.0])[:, None, None]
    y = to_sphere(x)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((3, 5), expected_norm(24)))
    torch.testing.assert_close(y, x / x.norm(dim=-1, keepdim=True) * expected_norm(24))
    torch.testing.assert_close(to_sphere(y), y)  # a projection
    assert torch.equal(to_sphere(torch.zeros(2, 24)), torch.zeros(2, 24))  # eps: zero stays zero, no NaN


def test_cosine_logits_are_twice_atanh_clipped_and_finite_in_bfloat16():
    cos = torch.tensor([-1.0, -0.5, 0.0, 0.3, 0.9999, 1.0])
    expected = 2.0 * torch.atanh(cos.clamp(-1 + 1e-4, 1 - 1e-4))
    torch.testing.assert_close(cosine_logits(cos), expected)
    assert cosine_logits(cos)[2].item() == 0.0
    assert cosine_logits(torch.tensor(1.0)).item() == pytest.approx(2.0 * math.atanh(1 - 1e-4), rel=1e-4)  # ~9.9
    low = cosine_logits(cos.bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    torch.testing.assert_close(low[[0, -1]], expected[[0, -1]])  # the bound is applied in float32


def test_full_precision_turns_autocast_off():
    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
        with full_precision(x):
            assert (x @ x).dtype == torch.float32


def test_sinusoid_codes():
    positions = torch.tensor([0.0, 1.0, 2.5, 100.0])
    codes = sinusoid(positions, 8)
    assert codes.shape == (4, 8) and codes.dtype == torch.float32
    torch.testing.assert_close(codes[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    angles = positions[:, None] * freqs
    torch.testing.assert_close(codes, torch.cat([angles.sin(), angles.cos()], dim=-1))
    assert sinusoid(torch.arange(6).view(2, 3), 4).shape == (2, 3, 4)
