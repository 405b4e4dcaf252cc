"""Decoder (decompressor + PA denoiser + existence head) and the diffusion losses that train it at every noise level."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.ddmm import add_noise
from modeling_zonkey.decoder import Decoder
from modeling_zonkey.level import LevelTargets, SegmentBatch
from modeling_zonkey.segment_splitter import build_segments
from modeling_zonkey.sphere import expected_norm, to_sphere

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


@pytest.fixture(scope="module")
def training_level(micro_config):
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config).train()
    ids = torch.randint(97, 123, (3, 40))
    valid = torch.ones(3, 40, dtype=torch.bool)
    x = model.embed_bytes(ids)
    level = model.levels[0]
    split = level.splitter(x, valid)
    segments = build_segments(split.bos_probs, split.boundaries, valid, level.window_length, split.log_not_bos)
    windows = segments.gather(x)
    latents = level.compressor(windows, segments.existence).latents
    targets = LevelTargets(x, ids, to_sphere(model.byte_embeddings.weight[:256]))
    sub = SegmentBatch.take(segments, windows, torch.arange(len(latents)), targets, valid)
    return model, level, sub, latents


def test_the_heavy_pass_is_trained_directly_and_the_light_pass_cannot_move_it(training_level):
    """The degenerate minimiser of the first checkpoint (heavy and light passes agreeing on one constant) needs
    the light pass's loss to reach the heavy estimate X2. It must not: X2 is trained by its own reconstruction
    loss ("denoising", at t ~ U(0, 1)), and the light pass reads it without gradient."""
    model, level, sub, latents = training_level
    torch.manual_seed(3)
    _, heavy, t1 = level.clean_and_heavy_passes(latents)
    terms = level.diffusion_terms(sub, heavy, t1)
    assert terms.ddmm is not None and torch.isfinite(terms.ddmm) and torch.isfinite(terms.denoising)
    to_heavy = torch.autograd.grad(terms.ddmm, terms.heavy.sequence, allow_unused=True, retain_graph=True)[0]
    assert to_heavy is None or to_heavy.abs().max() == 0
    from_denoising = torch.autograd.grad(terms.denoising, terms.heavy.sequence, retain_graph=True)[0]
    assert from_denoising.abs().sum() > 0
    decoder_grads = torch.autograd.grad(terms.ddmm, list(level.decoder.parameters()), allow_unused=True)
    assert sum(g.abs().sum() for g in decoder_grads if g is not None) > 0


def test_single_step_objective_has_no_light_pass(training_level, micro_config):
    _, level, sub, latents = training_level
    level.config = ZonkeyConfig(**{**micro_config.to_dict(), "ddmm_objective": "single_step"})
    try:
        terms = level.diffusion_terms(sub, *level.clean_and_heavy_passes(latents)[1:])
    finally:
        level.config = micro_config
    assert terms.ddmm is None and torch.isfinite(terms.denoising)


def test_decoder_rows_are_independent_so_passes_can_share_one_call(training_level):
    """The clean and heavy passes run as one batched decoder call: a row's output must not depend on the
    other rows of the batch (equal to float tolerance, with gradients)."""
    _, level, _, latents = training_level
    count = len(latents)
    t0, t1 = torch.full((count,), 0.05), torch.linspace(0.0, 1.0, count)
    noise = torch.randn(2, *latents.shape, generator=torch.Generator().manual_seed(0))
    z0 = add_noise(latents.detach(), t0, noise=noise[0])
    z1 = add_noise(latents.detach(), t1, noise=noise[1])
    both = level.decoder(torch.cat([z0, z1]), torch.cat([t0, t1]))
    apart = [level.decoder(z0, t0), level.decoder(z1, t1)]
    torch.testing.assert_close(both.sequence, torch.cat([a.sequence for a in apart]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both.existence, torch.cat([a.existence for a in apart]), rtol=1e-4, atol=1e-5)
    clean, heavy, _ = level.clean_and_heavy_passes(latents)
    assert clean.sequence.shape == heavy.sequence.shape == (count, level.window_length, latents.shape[1] // level.num_cls)


def test_light_pass_fraction_sends_that_share_of_the_rows_through_the_light_pass(training_level, micro_config):
    _, level, sub, latents = training_level
    rows = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    level.config = ZonkeyConfig(**{**micro_config.to_dict(), "light_pass_fraction": 0.5})
    try:
        torch.manual_seed(0)
        _, heavy, t1 = level.clean_and_heavy_passes(latents)
        terms = level.diffusion_terms(sub, heavy, t1)
    finally:
        level.config = micro_config
        handle.remove()
    count = len(latents)
    assert rows == [2 * count, round(0.5 * count)]
    assert torch.isfinite(terms.ddmm) and terms.ddmm > 0
    grads = torch.autograd.grad(terms.ddmm, list(level.decoder.parameters()), allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    with pytest.raises(ValueError, match="light_pass_fraction must be in"):
        ZonkeyConfig(**{**micro_config.to_dict(), "light_pass_fraction": 0.0})
