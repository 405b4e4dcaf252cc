"""Self-conditioning (ZonkeyConfig.self_conditioning): the decoder also reads the previous clean-latent estimate.

What must hold: a checkpoint without it loads into a model with it and behaves the same until trained; training feeds
the heavy pass a gradient-free estimate on about half of its rows and trains the light pass on the sampler's own
step; the sampler hands each step's estimate to the next decoder call; gradients reach the new weights.
"""

import pytest
import torch
from conftest import level0_segments

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.ddmm import add_noise, deterministic_step
from modeling_zonkey.sampling import denoise, noise_schedule
from modeling_zonkey.sphere import to_sphere

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sc_config(micro_config) -> ZonkeyConfig:
    return ZonkeyConfig(**{**micro_config.to_dict(), "self_conditioning": True})


@pytest.fixture(scope="module")
def sc_level(sc_config):
    """Level 0 of a fresh self-conditioned micro model, its weights W perturbed away from zero, on random words:
    (model, level, sub, latents, vocabulary)."""
    torch.manual_seed(0)
    model = ZonkeyModel(sc_config).train()
    with torch.no_grad():
        for level in model.levels:
            level.decoder.self_condition.weight.normal_(0.0, 0.1)
    level, sub, latents, vocabulary = level0_segments(model, detach=True)
    return model, level, sub, latents, vocabulary


def test_a_checkpoint_without_it_loads_unchanged(tmp_path, make_model, sc_config):
    """The new weights start at zero: the same checkpoint decodes identically, whatever estimate it is given."""
    plain = make_model(seed=3)
    plain.save_pretrained(tmp_path)
    conditioned = ZonkeyModel.from_pretrained(tmp_path, config=sc_config).eval()
    for level, before in zip(conditioned.levels, plain.levels):
        assert level.decoder.self_condition.weight.abs().max() == 0
        z = to_sphere(torch.randn(4, sc_config.latent_size(level.level)))
        t = torch.tensor([0.0, 0.3, 0.6, 1.0])
        with torch.no_grad():
            out = level.decoder(z, t, torch.randn_like(z))
            reference = before.decoder(z, t)
        torch.testing.assert_close(out.sequence, reference.sequence)
        torch.testing.assert_close(out.existence, reference.existence)
    assert ZonkeyModel(sc_config).levels[0].decoder.self_condition.weight.abs().max() == 0  # fresh models too


def test_an_estimate_for_a_decoder_without_self_conditioning_is_refused(make_model):
    level = make_model().levels[0]
    z = torch.randn(2, level.decoder.num_cls * 16)
    with pytest.raises(ValueError, match="self_conditioning"):
        level.decoder(z, torch.zeros(2), z)


def test_config_checks_the_switch(micro_config):
    with pytest.raises(ValueError, match="self_conditioning must be true or false"):
        ZonkeyConfig(**{**micro_config.to_dict(), "self_conditioning": "yes"})


def test_the_heavy_pass_gets_the_estimate_on_about_half_of_its_rows(sc_level):
    """clean_and_heavy_passes: the clean rows get no estimate; a heavy row gets either nothing or exactly
    Compress(snap(Dec(z_t1, t1))), the estimate a sampler's first step makes."""
    _, level, _, latents, vocabulary = sc_level
    calls = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        torch.manual_seed(5)
        passes = level.clean_and_heavy_passes(latents, vocabulary)
    finally:
        handle.remove()
    first_t, (z, t, condition) = calls[0][1], calls[1]
    count = len(latents)
    torch.testing.assert_close(z[count:], passes.noised1)
    given = condition[count:].abs().sum(-1) > 0
    assert condition[:count].abs().max() == 0
    assert 0 < int(given.sum()) < count
    assert torch.equal(first_t, t[count:][given])  # the gradient-free first pass ran on exactly those rows
    with torch.no_grad():
        expected = level.estimate(passes.noised1[given], passes.t1[given], vocabulary)
    torch.testing.assert_close(condition[count:][given], expected, rtol=1e-4, atol=1e-5)
    shares = []
    for seed in range(20):
        torch.manual_seed(seed)
        calls.clear()
        handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(args))
        try:
            level.clean_and_heavy_passes(latents, vocabulary)
        finally:
            handle.remove()
        shares.append(float((calls[-1][2][count:].abs().sum(-1) > 0).float().mean()))
    assert 0.35 < sum(shares) / len(shares) < 0.65


def test_the_light_pass_is_the_samplers_step(sc_level):
    """X3 = Dec(deterministic_step(z_t1, z'', t1, t2), t2, z'') with z'' = Compress(snap(X2)), t2 in [0, t1]."""
    _, level, sub, latents, vocabulary = sc_level
    torch.manual_seed(6)
    passes = level.clean_and_heavy_passes(latents, vocabulary)
    calls = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        terms = level.diffusion_terms(sub, passes)
    finally:
        handle.remove()
    (z2, t2, condition), = calls
    with torch.no_grad():
        estimate = level.recompress(passes.heavy, vocabulary)
    torch.testing.assert_close(condition, estimate, rtol=1e-4, atol=1e-5)
    assert ((t2 >= 0) & (t2 <= passes.t1)).all()
    torch.testing.assert_close(z2, deterministic_step(passes.noised1, estimate, passes.t1, t2), rtol=1e-4, atol=1e-5)
    # its loss trains the decoder, the new weights included, and never the heavy estimate
    grads = torch.autograd.grad(terms.ddmm, [level.decoder.self_condition.weight, terms.heavy.sequence],
                                allow_unused=True, retain_graph=True)
    assert grads[0].abs().sum() > 0
    assert grads[1] is None or grads[1].abs().max() == 0


def test_the_light_pass_reaches_the_latents_through_z_t1(sc_level):
    """The sampler's step keeps z_t1 (with its gradient), so the light pass also trains what made the latents."""
    _, level, sub, latents, vocabulary = sc_level
    latents = latents.clone().requires_grad_(True)
    torch.manual_seed(8)
    terms = level.diffusion_terms(sub, level.clean_and_heavy_passes(latents, vocabulary))
    grad = torch.autograd.grad(terms.ddmm, latents)[0]
    assert grad.abs().sum() > 0


def test_a_training_step_reaches_the_new_weights_at_every_level(sc_config):
    torch.manual_seed(1)
    model = ZonkeyModel(sc_config).train()
    ids = torch.randint(97, 123, (2, sc_config.document_length[0]))
    model(input_ids=ids, return_loss=True).loss.backward()
    for level in model.levels:
        assert level.decoder.self_condition.weight.grad.abs().sum() > 0, level.level


def test_the_sampler_hands_each_estimate_to_the_next_step(sc_level):
    """denoise(): the first decoder call has no estimate, each later one gets the previous step's Compress(X)."""
    model, level, _, latents, _ = sc_level
    model.eval()
    calls, estimates = [], []
    hooks = [level.decoder.register_forward_hook(lambda module, args, output: calls.append(args)),
             level.compressor.register_forward_hook(lambda module, args, output: estimates.append(output.latents))]
    generators = [torch.Generator().manual_seed(i) for i in range(len(latents))]
    try:
        for sampler in ("ddmm", "ddim"):
            calls.clear()
            estimates.clear()
            z = add_noise(latents, torch.full((len(latents),), 0.6))
            with torch.no_grad():
                denoise(level, z, noise_schedule("linear", 3, 0.6), sampler, generators,
                        torch.arange(len(latents)))
            assert len(calls) == 3 and calls[0][2] is None
            for step in (1, 2):
                torch.testing.assert_close(calls[step][2], estimates[step - 1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train()


def test_deterministic_step_keeps_the_implied_noise():
    """From z_t = add_noise(z0, t, eps) with the estimate z0: the step lands on add_noise(z0, t', eps), and on z0
    itself at t' = 0."""
    torch.manual_seed(2)
    z0 = to_sphere(torch.randn(4, 64))
    eps = torch.randn(4, 64)
    eps = eps - (eps * z0).sum(-1, keepdim=True) / (z0 * z0).sum(-1, keepdim=True) * z0
    eps = to_sphere(eps)
    t, t_next = torch.tensor([0.9, 0.7, 0.5, 0.2]), torch.tensor([0.5, 0.3, 0.0, 0.1])
    z = add_noise(z0, t, noise=eps)
    out = deterministic_step(z, z0, t, t_next)
    torch.testing.assert_close(out, add_noise(z0, t_next, noise=eps), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2], z0[2], atol=1e-4, rtol=1e-4)
