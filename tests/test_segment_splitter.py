"""Segment Splitter: forced boundaries, existence and ownership, regularisers, and its gradient paths."""

from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_zonkey.configuration_zonkey import ZonkeyConfig
from modeling_zonkey.modeling_zonkey import ZonkeyModel
from modeling_zonkey.segment_splitter import (
    SegmentSplitter,
    build_segments,
    compression_loss,
    density_factor,
    force_boundaries,
    mean_bos_probability,
    patch_loss,
    short_segment_loss,
)

MICRO = str(Path(__file__).resolve().parents[1] / "configuration" / "zonkey-micro.json")


def valid_mask(lengths, length):
    return torch.arange(length)[None] < torch.tensor(lengths)[:, None]


def random_bos_probs(lengths, length, generator, low=0.0, high=1.0):
    valid = valid_mask(lengths, length)
    p = (torch.rand(len(lengths), length, generator=generator) * (high - low) + low) * valid
    p[:, 0] = 1.0
    return p, valid


# ------------------------------------------------------------------------------------ forced boundaries
def test_forced_boundaries_bound_every_gap_and_tail():
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    for case in range(300):
        window = int(rng.integers(1, 12))
        batch = int(rng.integers(1, 4))
        width = int(rng.integers(1, 60))
        lengths = rng.integers(1, width + 1, size=batch).tolist()
        valid = valid_mask(lengths, width)
        density = float(rng.choice([0.0, 0.02, 0.2, 0.7]))
        chosen = torch.rand(batch, width, generator=generator) < density
        forced = force_boundaries(chosen, valid, window)
        assert forced.dtype == torch.bool and forced.shape == chosen.shape
        assert not (forced & ~valid).any(), case  # no BOS on padding
        assert (forced | ~(chosen & valid)).all(), case  # every chosen BOS is kept
        for row, n in enumerate(lengths):
            starts = forced[row].nonzero().flatten().tolist()
            assert starts[0] == 0, case
            bounds = starts + [n]
            gaps = np.diff(bounds)
            assert (gaps >= 1).all() and (gaps <= window).all(), (case, window, bounds)


def _forced_by_loop(chosen: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """The definition, row by row: from each chosen BOS a, force a + L, a + 2L, ... before the next one."""
    out = (chosen & valid).clone()
    for row in range(len(out)):
        n = int(valid[row].sum())
        if n == 0:
            continue
        out[row, 0] = True
        starts = out[row, :n].nonzero().flatten().tolist() + [n]
        for a, b in zip(starts[:-1], starts[1:]):
            for position in range(a + window, b, window):
                out[row, position] = True
    return out


def test_vectorised_forced_boundaries_equal_the_row_loop():
    generator = torch.Generator().manual_seed(3)
    for window in (2, 3, 8, 27):
        for density in (0.0, 0.02, 0.2, 0.7):
            chosen = torch.rand(16, 90, generator=generator) < density
            lengths = torch.randint(0, 91, (16,), generator=generator)
            valid = torch.arange(90) < lengths[:, None]
            assert torch.equal(force_boundaries(chosen, valid, window), _forced_by_loop(chosen, valid, window))


def test_forced_boundaries_are_minimal_when_nothing_chosen():
    valid = valid_mask([20, 9], 20)
    forced = force_boundaries(torch.zeros(2, 20, dtype=torch.bool), valid, 8)
    assert forced[0].nonzero().flatten().tolist() == [0, 8, 16]
    assert forced[1].nonzero().flatten().tolist() == [0, 8]


# ------------------------------------------------------------------------- existence and ownership
@pytest.mark.parametrize("seed", range(5))
def test_ownership_of_every_real_character_sums_to_one(seed):
    generator = torch.Generator().manual_seed(seed)
    lengths, width, window = [37, 20, 5, 1], 37, 8
    p, valid = random_bos_probs(lengths, width, generator)
    p = p.clamp(max=1.0 - 1e-4) * valid
    p[:, 0] = 1.0
    boundaries = force_boundaries(torch.bernoulli(p, generator=generator).bool(), valid, window)
    segments = build_segments(p, boundaries, valid, window)
    total = torch.zeros(len(lengths), width, dtype=torch.float64)
    rows = segments.document[:, None].expand_as(segments.positions)
    total.index_put_((rows[segments.in_document], segments.positions[segments.in_document]),
                     segments.ownership[segments.in_document].double(), accumulate=True)
    torch.testing.assert_close(total[valid], torch.ones(int(valid.sum()), dtype=torch.float64), atol=1e-5, rtol=0)
    assert (segments.ownership[~segments.in_document] == 0).all()
    assert (segments.existence[~segments.in_document] == 0).all()
    assert (segments.ownership >= 0).all() and (segments.ownership <= 1 + 1e-6).all()
    # bookkeeping: counts, starts, gaps
    assert segments.counts.tolist() == boundaries.sum(1).tolist()
    assert torch.equal(segments.start, boundaries.nonzero()[:, 1])
    for m in range(len(segments.start)):
        if segments.has_next[m]:
            assert segments.gap[m] == segments.start[m + 1] - segments.start[m]
        else:  # a document's last segment: its length to the document's end, at most L
            n = lengths[int(segments.document[m])]
            assert segments.gap[m] == n - segments.start[m]
            assert 1 <= segments.gap[m] <= window


def test_existence_is_cumulative_survival():
    p = torch.tensor([[1.0, 0.1, 0.2, 0.5, 0.3, 0.0]])
    valid = torch.ones(1, 6, dtype=torch.bool)
    boundaries = torch.tensor([[True, False, False, True, False, False]])
    segments = build_segments(p, boundaries, valid, 4)
    expected0 = torch.tensor([1.0, 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.5])
    expected1 = torch.tensor([1.0, 0.7, 0.7, 0.0])  # positions 3, 4, 5, then past the end
    torch.testing.assert_close(segments.existence[0], expected0)
    torch.testing.assert_close(segments.existence[1], expected1)
    assert segments.in_document[1].tolist() == [True, True, True, False]
    # position 3 is covered by both windows: ownership in proportion to existence
    torch.testing.assert_close(segments.ownership[0, 3], expected0[3] / (expected0[3] + 1.0))
    torch.testing.assert_close(segments.ownership[1, 0], 1.0 / (expected0[3] + 1.0))


def test_existence_carries_gradient_to_bos_probs():
    generator = torch.Generator().manual_seed(11)
    p, valid = random_bos_probs([16, 10], 16, generator, 0.05, 0.6)
    p = p.requires_grad_(True)
    boundaries = force_boundaries(torch.bernoulli(p.detach(), generator=generator).bool(), valid, 6)
    segments = build_segments(p, boundaries, valid, 6)
    (grad_existence,) = torch.autograd.grad(segments.existence.sum(), p, retain_graph=True)
    (grad_ownership,) = torch.autograd.grad((segments.ownership * torch.rand(segments.ownership.shape,
                                                                               generator=generator)).sum(), p)
    assert torch.isfinite(grad_existence).all() and torch.isfinite(grad_ownership).all()
    # every real position after a segment's start lowers that segment's existence
    inner = valid.clone()
    inner[:, 0] = False
    assert (grad_existence[inner] < 0).all()
    assert grad_ownership[inner].abs().sum() > 1e-3
    assert (grad_existence[~valid] == 0).all()


# --------------------------------------------------------------------------------- the BOS classifier
def make_splitter(seed=0, d=16, window=8):
    torch.manual_seed(seed)
    return SegmentSplitter(d, 2, window, [3, 5, 7, 9], 2)


def test_splitter_probabilities_first_one_padding_zero():
    splitter = make_splitter()
    lengths = [30, 12, 1]
    valid = valid_mask(lengths, 30)
    x = torch.randn(3, 30, 16)
    out = splitter(x, valid)
    p = out.bos_probs
    assert p.shape == (3, 30)
    assert (p[:, 0] == 1.0).all()
    assert (p[~valid] == 0.0).all()
    inner = valid.clone()
    inner[:, 0] = False
    assert (p[inner] > 0).all() and (p[inner] < 1).all()
    # log(1 - p) comes from the logit: equal to log1p(-p) where p is not saturated, 0 on padding
    torch.testing.assert_close(out.log_not_bos[inner], torch.log1p(-p[inner]), atol=1e-5, rtol=1e-4)
    assert (out.log_not_bos[~valid] == 0).all() and (out.log_not_bos[:, 0] < -20).all()
    # the prior logit puts the initial p_bos near 2/L
    assert abs(p[inner].mean().item() - 2 / 8) < 0.15
    assert not (out.boundaries & ~valid).any() and out.boundaries[:, 0].all()


def test_saturated_splitter_still_gets_gradient():
    """p_bos beyond 1e-4 / 1 - 1e-4 (|logit| > 9.2) still trains: log(1 - p), the existence and the patch loss
    come from the logit. Clipping p to [1e-4, 1 - 1e-4], as the first checkpoint did, gives them zero gradient."""
    splitter = make_splitter(3)
    valid = valid_mask([30, 20], 30)
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        splitter.head.weight.mul_(30.0)
    out = splitter(x, valid)
    inner = valid.clone()
    inner[:, 0] = False
    p = out.bos_probs[inner]
    saturated = (p < 1e-4) | (p > 1 - 1e-4)
    assert saturated.float().mean() > 0.5, "the test needs saturated probabilities"
    segments = build_segments(out.bos_probs, out.boundaries, valid, 8, out.log_not_bos)
    weights = torch.randn_like(segments.existence)
    loss = out.log_not_bos[inner][saturated].sum() + (segments.existence * weights).sum()
    loss = loss + patch_loss(out.bos_probs, valid, 8, out.log_not_bos)
    grad = torch.autograd.grad(loss, splitter.head.weight, retain_graph=True)[0]
    assert torch.isfinite(grad).all() and grad.norm() > 1.0
    clipped = out.bos_probs.clamp(1e-4, 1 - 1e-4)  # the old way: no gradient through saturated positions
    old = torch.autograd.grad(torch.log1p(-clipped[inner][saturated]).sum(), splitter.head.weight, allow_unused=True)[0]
    assert old is None or old.abs().max() == 0


def test_splitter_padding_does_not_change_real_probabilities():
    splitter = make_splitter(1).eval()
    x = torch.randn(1, 14, 16)
    short = splitter(x[:, :9], torch.ones(1, 9, dtype=torch.bool), threshold=0.5).bos_probs
    padded_x = torch.cat([x[:, :9], torch.randn(1, 5, 16)], dim=1)
    padded = splitter(padded_x, valid_mask([9], 14), threshold=0.5).bos_probs
    torch.testing.assert_close(padded[:, :9], short, atol=1e-5, rtol=1e-5)


def test_threshold_mode_is_deterministic():
    splitter = make_splitter(2)
    with torch.no_grad():
        splitter.head.bias.fill_(2.0)  # spread p around 0.5 so the threshold matters
    valid = valid_mask([40, 23], 40)
    x = torch.randn(2, 40, 16)
    first = splitter(x, valid, threshold=0.5)
    torch.manual_seed(123)
    second = splitter(x, valid, threshold=0.5)
    assert torch.equal(first.boundaries, second.boundaries)
    assert torch.equal(first.bos_probs, second.bos_probs)
    expected = force_boundaries(first.bos_probs > 0.5, valid, 8)
    assert torch.equal(first.boundaries, expected)
    above = (first.bos_probs > 0.5) & valid
    assert 0 < int(above.sum()) < int(valid.sum())
    assert (first.boundaries | ~above).all()
    # sampling mode, by contrast, varies with the random state
    torch.manual_seed(1)
    sampled_a = splitter(x, valid).boundaries
    torch.manual_seed(2)
    sampled_b = splitter(x, valid).boundaries
    assert not torch.equal(sampled_a, sampled_b)


# ---------------------------------------------------------------------------------------- regularisers
def test_patch_loss_small_when_boundaries_likely_large_when_not():
    valid = valid_mask([40, 25], 40)
    window = 8
    high = torch.full((2, 40), 1 - 1e-4) * valid
    low = torch.full((2, 40), 1e-4) * valid
    assert patch_loss(high, valid, window).item() < 1e-12
    assert patch_loss(low, valid, window).item() > 0.99
    # P(no BOS in a window of P) = (1 - p)^P, averaged over P in {L, L + 1, L + 2}
    mid = torch.full((2, 40), 0.1) * valid
    expected = np.mean([0.9**size for size in (window, window + 1, window + 2)])
    assert patch_loss(mid, valid, window).item() == pytest.approx(expected, rel=1e-4)
    # padding positions do not count as "no BOS"
    padded_valid = valid_mask([10, 10], 40)
    assert patch_loss(high * padded_valid, padded_valid, window).item() < 1e-12


def test_short_segment_loss_zero_when_spaced_positive_when_adjacent():
    num_cls, length = 4, 30
    valid = valid_mask([30, 22], length)
    for eps in (0.0, 1e-6):
        p = torch.full((2, length), eps)
        p[0, [0, 4, 8, 15, 19, 26]] = 1 - eps  # gaps >= C = 4
        p[1, [0, 5, 9, 13, 20]] = 1 - eps
        p = p * valid
        assert short_segment_loss(p, valid, num_cls).item() < 1e-4
        adjacent = p.clone()
        adjacent[0, 9] = 1 - eps  # a BOS right after the one at 8: a segment of length 1 < C
        loss = short_segment_loss(adjacent, valid, num_cls).item()
        assert loss > 0.05
        # exactly one of the 12 segments is short (length 1: shorter than C, C - 1 and C - 2)
        assert loss == pytest.approx(3 / 12, abs=1e-3)
        # a segment of length 3 is shorter than C = 4 only
        three = p.clone()
        three[0, 11] = 1 - eps  # 8 -> 11 (3 bytes), 11 -> 15 (4 bytes)
        assert short_segment_loss(three, valid, num_cls).item() == pytest.approx(1 / 12, abs=1e-3)


def test_compression_loss_zero_below_target_increasing_above():
    window = 8
    for mean_p in (0.0, 0.05, 1 / window):
        assert compression_loss(torch.tensor(mean_p), window).item() == pytest.approx(0.0, abs=1e-7)
    grid = torch.linspace(1 / window, 1.0, 20)
    values = torch.stack([compression_loss(m, window) for m in grid])
    assert (values[1:] > values[:-1]).all()
    assert compression_loss(torch.tensor(0.5), window).item() == pytest.approx((0.5 + 1 - 1 / 8) ** 2 - 1)


def test_density_factor_is_one_at_target():
    for window, offset in ((8, 0.1), (27, 0.1), (27, 0.3)):
        assert density_factor(torch.tensor(1 / window), window, offset).item() == pytest.approx(1.0)
    assert density_factor(torch.tensor(0.5), 8, 0.1).item() > 1.0
    assert density_factor(torch.tensor(0.0), 8, 0.1).item() < 1.0
    mean_p = torch.tensor(0.3, requires_grad=True)
    density_factor(mean_p, 8, 0.1).backward()  # not detached
    assert mean_p.grad.item() == pytest.approx(1 / (1 / 8 + 0.1))


def test_mean_bos_probability_excludes_first_and_padding():
    p = torch.tensor([[1.0, 0.2, 0.4, 0.0], [1.0, 0.6, 0.0, 0.0]])
    valid = valid_mask([3, 2], 4)
    assert mean_bos_probability(p, valid).item() == pytest.approx((0.2 + 0.4 + 0.6) / 3)


# ------------------------------------------------------------------ gradient path from the reconstruction
@pytest.fixture(scope="module")
def micro_training_pass():
    torch.manual_seed(0)
    config = ZonkeyConfig.from_pretrained(MICRO)
    model = ZonkeyModel(config).train()
    texts = [b"the quick brown fox jumps over the lazy dog", b"hello world, hello zonkey"]
    width = max(len(t) for t in texts)
    ids = torch.full((2, width), config.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor(list(text))
        mask[row, : len(text)] = 1
    out = model(ids, attention_mask=mask, return_loss=True)
    return model, out


def test_reconstruction_loss_alone_reaches_splitter(micro_training_pass):
    model, out = micro_training_pass
    model.zero_grad()
    reconstruction = out.loss_terms["level0/reconstruction"]
    assert torch.isfinite(reconstruction)
    reconstruction.backward(retain_graph=True)
    splitter = model.levels[0].splitter
    for name in ("head.weight", "head.bias"):
        grad = dict(splitter.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    assert splitter.local_attention.attn.q_proj.weight.grad.abs().sum() > 0
    assert sum(conv.weight.grad.abs().sum() for conv in splitter.convs) > 0


def test_reconstruction_reaches_splitter_through_existence_not_only_density(micro_training_pass):
    """Remove the density factor's own path: the gradient must still arrive (through PA and ownership)."""
    model, out = micro_training_pass
    level = out.levels[0]
    config = model.config
    density = density_factor(mean_bos_probability(level.bos_probs, level.valid), config.window_length[0],
                             config.density_offset)
    without_density = out.loss_terms["level0/reconstruction"] / density
    segments = level.segments
    grad_existence, grad_ownership = torch.autograd.grad(without_density, [segments.existence, segments.ownership],
                                                         retain_graph=True)
    assert torch.isfinite(grad_existence).all() and grad_existence.abs().sum() > 0  # PA (compressor)
    assert torch.isfinite(grad_ownership).all() and grad_ownership.abs().sum() > 0  # loss ownership
    (grad_head,) = torch.autograd.grad(segments.existence.sum(), model.levels[0].splitter.head.weight,
                                       retain_graph=True)
    assert grad_head.abs().sum() > 0  # existence is a function of the splitter's logits
    model.zero_grad()
    without_density.backward(retain_graph=True)
    head = model.levels[0].splitter.head.weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
