"""The loss terms of one hierarchy level (modeling_zonkey/level.py) on hand-built segments: level 0's byte
cross-entropy with atanh(cos) logits, the InfoNCE reconstruction of the levels above, the existence BCE (which
lets a NaN through), the per-byte (not per-segment) average, and SegmentBatch's subset and fixed segmentation
(a loss averaged with it does not train the splitter)."""

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey.compressor import info_nce
from modeling_zonkey.decoder import DecoderOutput
from modeling_zonkey.level import LevelTargets, SegmentBatch
from modeling_zonkey.segment_splitter import build_segments
from modeling_zonkey.sphere import cosine_logits, to_sphere

pytestmark = pytest.mark.usefixtures("single_thread")

D, L = 16, 8  # the micro preset's level 0: hidden size, window length


def byte_batch(seed: int = 0):
    """A level-0 SegmentBatch over two documents (10 and 6 bytes, fixed boundaries) with byte targets."""
    generator = torch.Generator().manual_seed(seed)
    valid = torch.arange(10)[None] < torch.tensor([[10], [6]])
    ids = torch.randint(0, 256, (2, 10), generator=generator) * valid
    vocabulary = to_sphere(torch.randn(256, D, generator=generator))
    x = vocabulary[ids]
    p = torch.zeros(2, 10)
    p[0, [0, 3]] = 1.0
    p[1, [0, 2]] = 1.0
    segments = build_segments(p, p.bool(), valid, L)
    windows = segments.gather(x)
    sub = SegmentBatch.take(segments, windows, torch.arange(len(windows)), LevelTargets(x, ids, vocabulary), valid)
    return sub, generator


def test_level0_reconstruction_is_the_byte_cross_entropy_with_atanh_logits(make_model):
    """Level 0: cross-entropy over the 256 bytes with 2 atanh(cos) logits against the byte embeddings at the real
    positions, 0 elsewhere; positive_cos replaces the cosine of the target byte (the DDMM positive)."""
    level = make_model(seed=4).levels[0]
    sub, generator = byte_batch()
    prediction = torch.randn(*sub.windows.shape, generator=generator)
    real = sub.in_document
    cos = F.normalize(prediction[real], dim=-1) @ F.normalize(sub.targets.vocabulary, dim=-1).T
    expected = torch.zeros(real.shape)
    expected[real] = F.cross_entropy(2.0 * torch.atanh(cos.clamp(-1 + 1e-4, 1 - 1e-4)), sub.ids[real], reduction="none")
    torch.testing.assert_close(level.reconstruction(prediction, sub), expected)
    assert (level.reconstruction(prediction, sub)[~real] == 0).all()
    positive = torch.full(real.shape, 0.99)
    cos[torch.arange(len(cos)), sub.ids[real]] = 0.99
    expected[real] = F.cross_entropy(cosine_logits(cos), sub.ids[real], reduction="none")
    torch.testing.assert_close(level.reconstruction(prediction, sub, positive), expected)
    # a prediction equal to the target bytes' embeddings scores lower than a random one
    assert level.reconstruction(sub.windows, sub)[real].mean() < expected[real].mean()


def test_upper_level_reconstruction_is_info_nce_against_the_level_input(make_model):
    """Levels >= 1: InfoNCE against the level's input vectors (every real position of the batch is the pool);
    the same draws as compressor.info_nce with num_negatives."""
    model = make_model(seed=5)
    level, d1 = model.levels[1], model.config.hidden_size[1]
    generator = torch.Generator().manual_seed(6)
    valid = torch.arange(12)[None] < torch.tensor([[12], [5]])
    x = to_sphere(torch.randn(2, 12, d1, generator=generator)) * valid[..., None]
    p = torch.zeros(2, 12)
    p[0, [0, 5, 9]] = 1.0
    p[1, 0] = 1.0
    segments = build_segments(p, p.bool(), valid, level.window_length)
    sub = SegmentBatch.take(segments, segments.gather(x), torch.arange(len(segments.gap)), LevelTargets(x), valid)
    prediction = torch.randn(*sub.windows.shape, generator=generator)
    real = sub.in_document
    torch.manual_seed(7)
    losses = level.reconstruction(prediction, sub)
    torch.manual_seed(7)
    expected = info_nce(prediction[real], sub.windows[real], x[valid], model.config.num_negatives)
    torch.testing.assert_close(losses[real], expected)
    assert (losses[~real] == 0).all()


def test_existence_loss_is_the_clamped_bce_and_lets_nan_through(make_model):
    """BCE of the decoder's existence against the splitter's; written out so that a NaN reaches the training
    script's non-finite guard instead of raising."""
    level = make_model(seed=8).levels[0]
    sub, generator = byte_batch(1)
    e = torch.rand(sub.existence.shape, generator=generator)
    e[0, 0], e[1, 1] = 0.0, 1.0  # clamped to 1e-6 / 1 - 1e-6: finite
    decoded = DecoderOutput(torch.zeros(*e.shape, D), e)
    expected = F.binary_cross_entropy(e.clamp(1e-6, 1 - 1e-6), sub.existence.clamp(0, 1))
    torch.testing.assert_close(level.existence_loss(decoded, sub), expected)
    e[0, 2] = float("nan")
    assert torch.isnan(level.existence_loss(DecoderOutput(decoded.sequence, e), sub))


def test_segment_batch_subset_and_fixed_segmentation(training_level):
    """subset indexes every per-segment field; with_fixed_segmentation detaches the ownership only, so a loss
    averaged with it does not train the splitter."""
    _, level, sub, _ = training_level
    index = torch.tensor([0, 2, 3])
    part = sub.subset(index)
    for name in ("windows", "existence", "ownership", "in_document", "gap", "ids"):
        assert torch.equal(getattr(part, name), getattr(sub, name)[index]), name
    assert part.targets is sub.targets
    fixed = sub.with_fixed_segmentation()
    assert sub.ownership.requires_grad and not fixed.ownership.requires_grad
    assert torch.equal(fixed.ownership, sub.ownership) and fixed.windows is sub.windows
    losses = torch.rand(sub.ownership.shape, generator=torch.Generator().manual_seed(9))
    splitter = list(level.splitter.parameters())
    moving = torch.autograd.grad(sub.average(losses), splitter, allow_unused=True, retain_graph=True)
    assert sum(g.abs().sum() for g in moving if g is not None) > 0
    assert not fixed.average(losses).requires_grad
    torch.testing.assert_close(fixed.average(losses), sub.average(losses).detach())


def test_the_loss_is_a_mean_over_bytes_not_over_segments():
    """Segments of 2 and 8 bytes: a loss of 1 on every byte of the short one and 0 on the long one averages to
    2 / 10 per byte (a per-segment mean would say 1 / 2)."""
    valid = torch.ones(1, 10, dtype=torch.bool)
    p = torch.zeros(1, 10)
    p[0, [0, 2]] = 1.0
    segments = build_segments(p, p.bool(), valid, L)
    assert segments.gap.tolist() == [2, 8]
    x = to_sphere(torch.randn(1, 10, D))
    windows = segments.gather(x)
    sub = SegmentBatch.take(segments, windows, torch.arange(2), LevelTargets(x), valid)
    losses = torch.zeros(2, L)
    losses[0, :2] = 1.0
    assert sub.average(losses).item() == pytest.approx(2 / 10, abs=1e-5)
