"""The decoder passes of one hierarchy level's diffusion loss (modeling_zonkey/level.py): the clean pass at a small
t0 and the heavy pass at t1 ~ U(0, 1) in one batched call (rows independent), the light pass on the recompressed
heavy estimate at t2 = t1 * U(0, 1) that cannot move the heavy estimate, the single-step objective without it,
light_pass_fraction, heavy_noise_draw and the sorted random subset of segments chosen for decoding."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.ddmm import add_noise, light_noise_levels
from modeling_zonkey.sphere import expected_norm

pytestmark = pytest.mark.usefixtures("single_thread")


def test_clean_and_heavy_passes_draw_t0_small_and_t1_uniform(training_level):
    """Dec(z_t0, t0) with t0 = light_noise_levels and Dec(z_t1, t1) with t1 ~ U(0, 1): the same draws, in that
    order, decoded one pass at a time give the same outputs as the one batched call."""
    model, level, _, latents = training_level
    z = latents.detach()
    torch.manual_seed(10)
    passes = level.clean_and_heavy_passes(z)
    clean, heavy, t1 = passes.clean, passes.heavy, passes.t1
    torch.manual_seed(10)
    t0 = light_noise_levels(len(z), model.config.light_noise_scale, z.device)
    z0 = add_noise(z, t0)
    t1_again = torch.rand(len(z))
    z1 = add_noise(z, t1_again)
    assert torch.equal(t1, t1_again)
    assert (t0 <= model.config.light_noise_scale / 0.25 + 1e-6).all()
    with torch.no_grad():
        apart = level.decoder(z0, t0), level.decoder(z1, t1)
    for batched, alone in zip((clean, heavy), apart):
        torch.testing.assert_close(batched.sequence, alone.sequence, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.existence, alone.existence, rtol=1e-4, atol=1e-5)


def test_the_light_pass_decodes_the_recompressed_heavy_estimate_at_a_lower_noise(training_level):
    """Mixed objective: z'' = Compress(X2) (no gradient), t2 = t1 * U(0, 1), X3 = Dec(add_noise(z'', t2), t2)."""
    _, level, sub, latents = training_level
    torch.manual_seed(11)
    passes = level.clean_and_heavy_passes(latents)
    heavy, t1 = passes.heavy, passes.t1
    calls = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        torch.manual_seed(12)
        level.diffusion_terms(sub, passes)
    finally:
        handle.remove()
    (noised, t2), = calls
    torch.manual_seed(12)
    with torch.no_grad():
        estimate = level.compressor(heavy.sequence, heavy.existence).latents
    expected_t2 = t1 * torch.rand(len(t1))
    torch.testing.assert_close(t2, expected_t2, atol=0, rtol=0)
    assert (t2 <= t1).all()
    torch.testing.assert_close(noised, add_noise(estimate, expected_t2), atol=1e-6, rtol=1e-6)
    assert not noised.requires_grad
    torch.testing.assert_close(noised.norm(dim=-1), torch.full((len(t1),), expected_norm(noised.shape[1])))


def test_choose_decoded_takes_all_or_a_sorted_random_subset(micro_config):
    level = ZonkeyModel(micro_config).levels[0]
    assert torch.equal(level.choose_decoded(5, 5, torch.device("cpu")), torch.arange(5))
    assert torch.equal(level.choose_decoded(3, 8, torch.device("cpu")), torch.arange(3))
    torch.manual_seed(13)
    chosen = level.choose_decoded(20, 6, torch.device("cpu"))
    assert len(chosen) == 6 and len(chosen.unique()) == 6 and torch.equal(chosen, chosen.sort().values)
    assert 0 <= chosen.min() and chosen.max() < 20
    torch.manual_seed(13)
    assert torch.equal(level.choose_decoded(20, 6, torch.device("cpu")), chosen)


def test_the_heavy_pass_is_trained_directly_and_the_light_pass_cannot_move_it(training_level):
    """The degenerate minimiser of the first checkpoint (heavy and light passes agreeing on one constant) needs
    the light pass's loss to reach the heavy estimate X2. It must not: X2 is trained by its own reconstruction
    loss ("denoising", at t ~ U(0, 1)), and the light pass reads it without gradient."""
    model, level, sub, latents = training_level
    torch.manual_seed(3)
    terms = level.diffusion_terms(sub, level.clean_and_heavy_passes(latents))
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
        terms = level.diffusion_terms(sub, level.clean_and_heavy_passes(latents))
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
    passes = level.clean_and_heavy_passes(latents)
    clean, heavy = passes.clean, passes.heavy
    assert (clean.sequence.shape == heavy.sequence.shape
            == (count, level.window_length, latents.shape[1] // level.num_cls))


def test_light_pass_fraction_sends_that_share_of_the_rows_through_the_light_pass(training_level, micro_config):
    _, level, sub, latents = training_level
    rows = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    level.config = ZonkeyConfig(**{**micro_config.to_dict(), "light_pass_fraction": 0.5})
    try:
        torch.manual_seed(0)
        terms = level.diffusion_terms(sub, level.clean_and_heavy_passes(latents))
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


def test_heavy_noise_draw_sqrt_puts_more_rows_at_high_noise(training_level, micro_config):
    """heavy_noise_draw="sqrt": t1 = U ** 0.5 from the same uniform draws (mean 2/3 instead of 1/2)."""
    _, level, _, latents = training_level
    draws = {}
    for draw in ("uniform", "sqrt"):
        level.config = ZonkeyConfig(**{**micro_config.to_dict(), "heavy_noise_draw": draw})
        try:
            torch.manual_seed(21)
            draws[draw] = level.clean_and_heavy_passes(latents.detach()).t1
        finally:
            level.config = micro_config
    torch.testing.assert_close(draws["sqrt"], draws["uniform"].sqrt())
    with pytest.raises(ValueError, match="heavy_noise_draw must be"):
        ZonkeyConfig(**{**micro_config.to_dict(), "heavy_noise_draw": "beta"})
