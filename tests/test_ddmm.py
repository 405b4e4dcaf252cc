"""DDMM (noise on the sphere, light noise levels, path positive)."""

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey.ddmm import add_noise, light_noise_levels, path_positive
from modeling_zonkey.sphere import expected_norm, to_sphere

D, C = 16, 4


# ------------------------------------------------------------------------------------------------- noise
def test_add_noise_identity_at_zero_and_input_free_at_one():
    generator = torch.Generator().manual_seed(6)
    a = to_sphere(torch.randn(4, C * D, generator=generator))
    b = to_sphere(torch.randn(4, C * D, generator=generator))
    zeros, ones = torch.zeros(4), torch.ones(4)
    torch.testing.assert_close(add_noise(a, zeros, torch.Generator().manual_seed(9)), a, atol=1e-5, rtol=1e-6)
    noise_a = add_noise(a, ones, torch.Generator().manual_seed(9))
    noise_b = add_noise(b, ones, torch.Generator().manual_seed(9))
    torch.testing.assert_close(noise_a, noise_b)
    assert F.cosine_similarity(noise_a, a, dim=-1).abs().max() < 0.5  # unrelated to the input
    assert not torch.allclose(add_noise(a, ones, torch.Generator().manual_seed(10)), noise_a)


def test_noised_latents_have_the_right_norm_and_interpolate():
    generator = torch.Generator().manual_seed(7)
    z = to_sphere(torch.randn(64, C * D, generator=generator))
    t = torch.rand(64, generator=generator)
    noised = add_noise(z, t, generator)
    norms = noised.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, expected_norm(C * D)), atol=1e-4, rtol=1e-5)
    # more noise, less of the signal: the cosine to z falls with t (on average, for a fixed noise draw)
    grid = torch.tensor([0.0, 0.1, 0.5, 0.9])
    cosines = [F.cosine_similarity(add_noise(z, torch.full((64,), float(s)), torch.Generator().manual_seed(3)), z,
                                   dim=-1).mean() for s in grid]
    assert all(a > b for a, b in zip(cosines, cosines[1:]))
    assert cosines[0] > 0.999


def test_light_noise_levels_mean_and_range():
    torch.manual_seed(8)
    t = light_noise_levels(20000, 0.02, torch.device("cpu"))
    assert t.shape == (20000,) and (t >= 0).all() and (t <= 1).all()
    assert t.mean().item() == pytest.approx(0.02, rel=0.05)
    assert t.max().item() <= 0.02 / 0.25 + 1e-6


# ------------------------------------------------------------------------------------- path positive
def orthonormal_pair(d=D, seed=9):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=generator))
    return q[:, 0], q[:, 1]


def test_path_positive_endpoints_and_closed_form_midpoint():
    x2, x = orthonormal_pair()
    target = path_positive(x.clone(), x2, x)
    assert target.lam.item() == pytest.approx(1.0, abs=1e-5) and target.cosine.item() == pytest.approx(1.0, abs=1e-5)
    previous = path_positive(x2.clone(), x2, x)
    assert previous.lam.item() == pytest.approx(0.0, abs=1e-5)
    assert previous.cosine.item() == pytest.approx(1.0, abs=1e-5)
    middle = F.normalize(x2 + x, dim=0)
    mid = path_positive(middle, x2, x)
    assert mid.lam.item() == pytest.approx(0.5, abs=1e-4)
    assert mid.cosine.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.75])
def test_path_positive_recovers_any_point_on_the_path(lam):
    x2, x = orthonormal_pair(seed=10)
    scale = expected_norm(D)
    x2, x = x2 * scale, x * 1.7 * scale  # different norms: lambda is along the straight segment from x2 to x
    x3 = F.normalize(x2 + lam * (x - x2), dim=0) * 5.0
    out = path_positive(x3, x2, x)
    assert out.lam.item() == pytest.approx(lam, abs=1e-4)
    assert out.cosine.item() == pytest.approx(1.0, abs=1e-5)


def test_path_positive_is_the_maximum_over_the_segment():
    generator = torch.Generator().manual_seed(11)
    x3, x2, x = (torch.randn(32, D, generator=generator) for _ in range(3))
    out = path_positive(x3, x2, x)
    assert out.cosine.shape == (32,) and out.lam.shape == (32,)
    grid = torch.linspace(0, 1, 2001)
    points = x2[:, None] + grid[None, :, None] * (x - x2)[:, None]  # (32, G, D)
    brute = F.cosine_similarity(x3[:, None], points, dim=-1)
    best = brute.max(dim=1).values
    assert (out.cosine >= best - 1e-5).all()
    assert (out.cosine <= best + 1e-5).all()  # and it lies on the segment
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    # batched leading dims (M, L, d) work too
    nested = path_positive(x3.view(4, 8, D), x2.view(4, 8, D), x.view(4, 8, D))
    torch.testing.assert_close(nested.cosine.flatten(), out.cosine)


def test_path_positive_gradient_is_finite():
    x2, x = orthonormal_pair(seed=12)
    for x3 in (x.clone(), x2.clone(), F.normalize(x2 + x, dim=0)):
        x3 = x3.requires_grad_(True)
        path_positive(x3, x2, x).cosine.backward()
        assert torch.isfinite(x3.grad).all()
