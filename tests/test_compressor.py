"""Compressor (latents on the sphere, anti-collapse, InfoNCE)."""

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey.compressor import Compressor, anti_collapse_loss, info_nce
from modeling_zonkey.segment_splitter import build_segments, force_boundaries
from modeling_zonkey.sphere import cosine_logits, expected_norm, to_sphere

D, HEADS, C, L = 16, 2, 4, 8


def make_compressor(seed=0):
    torch.manual_seed(seed)
    compressor = Compressor(D, HEADS, 2, C, 2)
    torch.nn.init.normal_(compressor.cls_vectors)  # (ZonkeyModel._init_weights does this in the model)
    return compressor


def random_segments(seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = [30, 13]
    valid = torch.arange(30)[None] < torch.tensor(lengths)[:, None]
    p = torch.rand(2, 30, generator=generator) * 0.5 * valid
    p[:, 0] = 1.0
    boundaries = force_boundaries(torch.bernoulli(p, generator=generator).bool(), valid, L)
    segments = build_segments(p, boundaries, valid, L)
    x = to_sphere(torch.randn(2, 30, D, generator=generator))
    return segments, segments.gather(x)


# -------------------------------------------------------------------------------------------- Compressor
def test_compressor_latents_on_the_sphere():
    compressor = make_compressor()
    segments, windows = random_segments()
    out = compressor(windows, segments.existence)
    assert out.latents.shape == (len(windows), C * D)
    assert out.hidden_states.shape == (len(windows), L, D)
    norms = out.latents.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, expected_norm(C * D)), atol=1e-4, rtol=1e-5)
    assert torch.isfinite(out.latents).all()
    # positions past the document's end (existence 0) come out as zeros
    assert (out.hidden_states[segments.existence == 0] == 0).all()


def test_compressor_latents_only_computes_the_same_latents():
    """latents_only (generation): the last layer computes its queries and FFN for the CLS rows only; the latents
    are the full pass's, and every segment position is still attended to."""
    compressor = make_compressor(2).eval()
    segments, windows = random_segments(2)
    with torch.no_grad():
        full = compressor(windows, segments.existence)
        short = compressor(windows, segments.existence, latents_only=True)
    assert short.hidden_states is None
    torch.testing.assert_close(short.latents, full.latents, atol=1e-5, rtol=1e-5)
    altered = windows.clone()
    altered[:, 1] = -altered[:, 1]  # a segment position that exists still changes the latent
    with torch.no_grad():
        assert not torch.allclose(compressor(altered, segments.existence, latents_only=True).latents, short.latents)


def test_compressor_ignores_non_existing_positions():
    """Content at positions with existence 0 cannot change the latent."""
    compressor = make_compressor(1).eval()
    generator = torch.Generator().manual_seed(2)
    windows = to_sphere(torch.randn(3, L, D, generator=generator))
    existence = torch.tensor([[1.0, 0.9, 0.8, 0.5, 0.0, 0.0, 0.0, 0.0]]).expand(3, L).contiguous()
    altered = windows.clone()
    altered[:, 4:] = to_sphere(torch.randn(3, L - 4, D, generator=generator))
    with torch.no_grad():
        a = compressor(windows, existence).latents
        b = compressor(altered, existence).latents
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compressor_gradient_reaches_existence():
    compressor = make_compressor(3)
    segments, windows = random_segments(3)
    existence = segments.existence.clone().requires_grad_(True)
    latents = compressor(windows, existence).latents
    (latents * torch.randn_like(latents)).sum().backward()
    assert torch.isfinite(existence.grad).all() and existence.grad.abs().sum() > 0


def test_anti_collapse_identical_latents_is_one():
    v = to_sphere(torch.randn(1, 32))
    latents = v.expand(6, 32).contiguous()
    document = torch.tensor([0, 0, 1, 1, 2, 2])
    assert anti_collapse_loss(latents, document).item() == pytest.approx(1.0, abs=1e-5)


def test_anti_collapse_orthogonal_or_balanced_latents_is_zero():
    eye = torch.eye(8) * 3.0
    # orthogonal latents across documents
    assert anti_collapse_loss(eye[:4], torch.tensor([0, 1, 2, 3])).item() == pytest.approx(0.0, abs=1e-6)
    # opposite latents that cancel: doc 0 = {v}, doc 1 = {v, -v} -> mean cosine (1 - 1) / 2 = 0
    v = eye[0]
    assert anti_collapse_loss(torch.stack([v, v, -v]), torch.tensor([0, 1, 1])).item() == pytest.approx(0.0, abs=1e-6)
    # pairs inside one document do not count: doc 0 = {v, v}, doc 1 = {u}, u orthogonal to v
    within = anti_collapse_loss(torch.stack([v, v, eye[1]]), torch.tensor([0, 0, 1]))
    assert within.item() == pytest.approx(0.0, abs=1e-6)
    # a single document has no pairs: zero, finite, and still in the graph
    latents = torch.randn(3, 8, requires_grad=True)
    single = anti_collapse_loss(latents, torch.tensor([0, 0, 0]))
    assert single.item() == 0.0 and single.requires_grad


def test_anti_collapse_is_the_mean_cross_document_cosine():
    generator = torch.Generator().manual_seed(4)
    latents = torch.randn(7, 10, generator=generator) + 0.5
    document = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    unit = F.normalize(latents, dim=-1)
    cos = unit @ unit.T
    cross = document[:, None] != document[None, :]
    expected = cos[cross].mean().abs()
    assert anti_collapse_loss(latents, document).item() == pytest.approx(expected.item(), abs=1e-5)


def test_info_nce_never_uses_the_positive_as_its_own_negative():
    generator = torch.Generator().manual_seed(5)
    target = torch.randn(5, D, generator=generator)
    prediction = torch.randn(5, D, generator=generator, requires_grad=True)
    for row in range(5):
        pool = target[row : row + 1].expand(9, D)  # only copies of the target
        loss = info_nce(prediction[row : row + 1], target[row : row + 1], pool, 12)
        assert torch.isfinite(loss).all() and loss.item() == pytest.approx(0.0, abs=1e-6)
    # a pool of every row's target: each row's own target is masked, the others are negatives
    torch.manual_seed(0)
    losses = info_nce(prediction, target, target, 20)
    assert losses.shape == (5,) and torch.isfinite(losses).all() and (losses > 0).all()
    losses.sum().backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    # a perfect prediction scores better than a wrong one
    torch.manual_seed(0)
    perfect = info_nce(target, target, target, 20)
    assert (perfect < losses.detach()).all()


def test_info_nce_against_every_pool_vector():
    """num_negatives=None: the softmax runs over the positive and every pool vector except copies of the target."""
    generator = torch.Generator().manual_seed(7)
    target = torch.randn(4, D, generator=generator)
    pool = torch.cat([target, torch.randn(6, D, generator=generator), target[:1]])  # row 0's target appears twice
    prediction = torch.randn(4, D, generator=generator, requires_grad=True)
    losses = info_nce(prediction, target, pool, None)
    pred, unit = F.normalize(prediction, dim=-1), F.normalize(pool, dim=-1)
    for row in range(4):
        keep = ~(F.normalize(target[row], dim=-1) @ unit.T > 1 - 1e-6)
        assert int((~keep).sum()) == (2 if row == 0 else 1)
        logits = cosine_logits(torch.cat([(pred[row] * F.normalize(target[row], dim=-1)).sum()[None],
                                          (pred[row] @ unit.T)[keep]]))
        torch.testing.assert_close(losses[row], -torch.log_softmax(logits, 0)[0])
    losses.sum().backward()
    assert prediction.grad.abs().sum() > 0


def test_info_nce_positive_override():
    target = torch.eye(4)[:2]
    pool = torch.eye(4)
    prediction = target.clone()
    torch.manual_seed(1)
    default = info_nce(prediction, target, pool, 6)
    torch.manual_seed(1)
    lowered = info_nce(prediction, target, pool, 6, positive_cos=torch.full((2,), 0.5))
    assert (lowered > default).all()
