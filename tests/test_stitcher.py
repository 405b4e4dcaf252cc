"""Stitcher: exact reassembly from clean segments, offset inference from sharp existence, position loss."""

import pytest
import torch

from modeling_zonkey.segment_splitter import build_segments, force_boundaries
from modeling_zonkey.sphere import expected_norm, to_sphere
from modeling_zonkey.stitcher import Stitcher, position_loss

D, HEADS, L = 16, 2, 8


def make_stitcher(seed=0):
    torch.manual_seed(seed)
    stitcher = Stitcher(D, HEADS, L)
    with torch.no_grad():  # (ZonkeyModel._init_weights does this in the model)
        stitcher.alpha.fill_(1.0)
        stitcher.rho.fill_(0.1)
    return stitcher


def sharp_segments(lengths, seed, eps=0.0):
    """Random documents cut at random BOS positions; p_bos in {eps, 1 - eps}. -> (x, valid, segments)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    valid = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    chosen = torch.rand(len(lengths), width, generator=generator) < 0.3
    boundaries = force_boundaries(chosen, valid, L)
    p = torch.where(boundaries, 1.0 - eps, eps) * valid
    p[:, 0] = 1.0
    segments = build_segments(p, boundaries, valid, L)
    x = to_sphere(torch.randn(len(lengths), width, D, generator=generator))
    return x, valid, segments


# -------------------------------------------------------------------------------------------- assembly
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_assemble_reproduces_the_sequence_from_true_offsets(seed, eps):
    stitcher = make_stitcher()
    lengths = [41, 17, 8, 1]
    x, valid, segments = sharp_segments(lengths, seed, eps)
    windows = segments.gather(x)
    for row, n in enumerate(lengths):
        mine = segments.document == row
        seg, ex, gap = windows[mine], segments.existence[mine], segments.gap[mine]
        with torch.no_grad():
            # offsets of the next segments (K - 1); the last one is kept while its existence > cutoff
            assembled = stitcher.assemble(seg, ex, gap[:-1], refine=False)
            assert assembled.shape == (n, D), (row, assembled.shape)
            assert torch.equal(assembled, x[row, :n])
            # offsets plus the last segment's length (K)
            assert torch.equal(stitcher.assemble(seg, ex, gap, refine=False), x[row, :n])
            # inferred offsets: with sharp existence the prior alone puts them at the true cuts
            assert torch.equal(stitcher.assemble(seg, ex, None, refine=False), x[row, :n])


def test_assemble_with_refiner_keeps_length_and_sphere():
    stitcher = make_stitcher(1)
    x, valid, segments = sharp_segments([30], 5)
    windows = segments.gather(x)
    with torch.no_grad():
        out = stitcher.assemble(windows, segments.existence, segments.gap[:-1], refine=True)
    assert out.shape == (30, D)
    norms = out.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, expected_norm(D)), atol=1e-4, rtol=1e-5)
    last = int(segments.start[-1])
    assert torch.equal(out[last:], x[0, last:30])  # the last segment is not refined
    assert (out[:last] - x[0, :last]).norm(dim=-1).max() > 0  # the others are, a little
    # rho = 0: the refiner is the identity
    with torch.no_grad():
        stitcher.rho.zero_()
        same = stitcher.assemble(windows, segments.existence, segments.gap[:-1], refine=True)
    torch.testing.assert_close(same, x[0, :30], atol=1e-5, rtol=1e-5)


def test_refine_respects_the_shifted_frame():
    """Keys of seq2 sit at gap + j: their sinusoid codes and the PA bias use that frame."""
    stitcher = make_stitcher(2)
    generator = torch.Generator().manual_seed(3)
    seq1, seq2 = (to_sphere(torch.randn(2, L, D, generator=generator)) for _ in range(2))
    e1 = torch.tensor([[1.0] * 5 + [0.2] * 3, [1.0] * 3 + [0.1] * 5])
    e2 = torch.ones(2, L)
    with torch.no_grad():
        a = stitcher.refine(seq1, e1, seq2, e2, torch.tensor([5, 3]))
        b = stitcher.refine(seq1, e1, seq2, e2, torch.tensor([1, 1]))
    assert a.shape == (2, L, D) and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------- offset inference
def test_infer_offset_with_sharp_existence_finds_the_true_gap():
    stitcher = make_stitcher(4)
    generator = torch.Generator().manual_seed(4)
    gaps = torch.arange(1, L + 1)
    pairs = len(gaps)
    seq1, seq2 = (to_sphere(torch.randn(pairs, L, D, generator=generator)) for _ in range(2))
    e1 = (torch.arange(L)[None] < gaps[:, None]).float()  # 1 up to the gap, 0 after
    with torch.no_grad():
        out = stitcher.infer_offset(seq1, e1, seq2)
    assert out.offset_probs.shape == (pairs, L)
    torch.testing.assert_close(out.offset_probs.sum(-1), torch.ones(pairs))
    torch.testing.assert_close(out.n_hat, gaps.float(), atol=1e-4, rtol=0)
    assert torch.equal(out.offset_probs.argmax(-1) + 1, gaps)
    # eps instead of 0 after the gap: still the gap
    soft = e1.clamp_min(1e-6)
    with torch.no_grad():
        out_soft = stitcher.infer_offset(seq1, soft, seq2)
    torch.testing.assert_close(out_soft.n_hat, gaps.float(), atol=1e-3, rtol=0)


def test_infer_offset_prior_dominates_content_when_sharp():
    """Even when the content matches a wrong offset perfectly, the sharp prior decides."""
    stitcher = make_stitcher(5)
    generator = torch.Generator().manual_seed(5)
    seq1 = to_sphere(torch.randn(1, L, D, generator=generator))
    seq2 = torch.cat([seq1[:, 2:], to_sphere(torch.randn(1, 2, D, generator=generator))], dim=1)  # matches n = 2
    e1 = (torch.arange(L)[None] < 5).float()  # true gap 5
    # the two projections are learned; make them equal so that equal vectors match with cosine 1
    stitcher.proj2.load_state_dict(stitcher.proj1.state_dict())
    with torch.no_grad():
        out = stitcher.infer_offset(seq1, e1, seq2)
        assert out.n_hat.item() == pytest.approx(5.0, abs=1e-3)
        # with a flat prior (soft existence), the content match pulls toward n = 2
        flat = torch.linspace(1.0, 0.3, L)[None]
        stitcher.alpha.fill_(20.0)
        loose = stitcher.infer_offset(seq1, flat, seq2)
    assert loose.offset_probs.argmax(-1).item() + 1 == 2


def test_infer_offset_is_differentiable():
    stitcher = make_stitcher(6)
    generator = torch.Generator().manual_seed(6)
    seq1, seq2 = (to_sphere(torch.randn(3, L, D, generator=generator)) for _ in range(2))
    e1 = torch.cumprod(torch.full((3, L), 0.8), dim=1).requires_grad_(True)
    out = stitcher.infer_offset(seq1, e1, seq2)
    out.n_hat.sum().backward()
    assert torch.isfinite(e1.grad).all() and e1.grad.abs().sum() > 0
    assert stitcher.alpha.grad is not None and torch.isfinite(stitcher.alpha.grad)
    assert ((out.n_hat >= 1) & (out.n_hat <= L)).all()


# ------------------------------------------------------------------------------------------ position loss
def test_position_loss_zero_at_true_gap_and_grows_with_distance():
    in_document = torch.ones(1, L, dtype=torch.bool)
    gap = torch.tensor([4])
    assert position_loss(torch.tensor([4.0]), gap, in_document).item() == 0.0
    values = [position_loss(torch.tensor([float(n)]), gap, in_document).item() for n in torch.linspace(1, L, 29)]
    distances = [abs(float(n) - 4) for n in torch.linspace(1, L, 29)]
    for value, distance in zip(values, distances):
        assert value == pytest.approx(distance, abs=1e-5)  # one unit of mass per real character
    left = [v for v, n in zip(values, torch.linspace(1, L, 29)) if n <= 4]
    right = [v for v, n in zip(values, torch.linspace(1, L, 29)) if n >= 4]
    assert all(a > b for a, b in zip(left, left[1:])) and all(a < b for a, b in zip(right, right[1:]))


def test_position_loss_counts_only_real_characters_and_has_gradient():
    in_document = torch.tensor([[True] * 5 + [False] * 3, [True] * L])
    gap = torch.tensor([3, 2])
    n_hat = torch.tensor([7.5, 2.0], requires_grad=True)
    loss = position_loss(n_hat, gap, in_document)
    assert loss[0].item() == pytest.approx(2.0, abs=1e-6)  # only positions 3 and 4 are real
    assert loss[1].item() == 0.0
    n_hat2 = torch.tensor([3.5, 5.25], requires_grad=True)
    loss2 = position_loss(n_hat2, gap, in_document)
    torch.testing.assert_close(loss2, torch.tensor([0.5, 3.25]))
    loss2.sum().backward()
    torch.testing.assert_close(n_hat2.grad, torch.tensor([1.0, 1.0]))
    # at the window's end (n_hat = L) it is finite
    end = position_loss(torch.tensor([float(L)]), torch.tensor([1]), torch.ones(1, L, dtype=torch.bool))
    assert end.item() == pytest.approx(L - 1.0)
