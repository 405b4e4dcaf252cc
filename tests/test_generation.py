"""generate() from noise: seeded determinism, batching, the samplers and clamping, variable length, the length options
and their names, defaults. The saved generation config and the options' errors: test_generation_options.py; prompts,
infilling and reconstruction from text: test_generation_prompts.py; examples/generate.py: test_generate_example.py."""


import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyGenerateOutput, ZonkeyGenerationConfig, ZonkeyModel
from modeling_zonkey.decoder import DecoderOutput

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"num_steps": 4}


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)


def texts(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def lengths(ids: torch.Tensor) -> list[int]:
    return (ids != 256).sum(1).tolist()


# ------------------------------------------------------------------------------------- unconditional
@pytest.mark.parametrize("sampler", ["ddmm", "ddim", "deterministic"])
def test_seeded_generation_is_deterministic(model, sampler):
    # without clamping: the untrained model's clamped chain falls onto one fixed point whatever the seed
    options = dict(sampler=sampler, return_dict_in_generate=True, clamp=False, **FAST)
    first = model.generate(num_return_sequences=3, seed=11, **options)
    again = model.generate(num_return_sequences=3, seed=11, **options)
    other = model.generate(num_return_sequences=3, seed=12, **options)
    assert isinstance(first, ZonkeyGenerateOutput)
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.latents, again.latents)
    assert not torch.allclose(first.latents, other.latents, atol=1e-4)  # the seed reaches the noise
    # the three samples of one call got different noise
    assert not torch.allclose(first.latents[0], first.latents[1], atol=1e-4)


@pytest.mark.parametrize("sampler", ["deterministic", "ddmm", "ddim"])
def test_batch_of_n_equals_n_single_runs(model, sampler):
    batch = model.generate(num_return_sequences=4, seed=5, sampler=sampler, return_dict_in_generate=True, **FAST)
    for i in range(4):
        single = model.generate(num_return_sequences=1, seed=5 + i, sampler=sampler, return_dict_in_generate=True,
                                **FAST)
        torch.testing.assert_close(single.latents[0], batch.latents[i], atol=1e-5, rtol=1e-5)
        width = single.sequences.shape[1]
        assert torch.equal(single.sequences[0], batch.sequences[i, :width])
        assert (batch.sequences[i, width:] == 256).all()


def test_ddmm_sampler_renoises_and_deterministic_does_not(model):
    ddmm = model.generate(seed=1, sampler="ddmm", return_dict_in_generate=True, **FAST).latents
    plain = model.generate(seed=1, sampler="deterministic", return_dict_in_generate=True, **FAST).latents
    assert not torch.allclose(ddmm, plain, atol=1e-4)
    # with one step there is nothing to re-noise: the samplers agree
    one = {"num_steps": 1, "seed": 1, "return_dict_in_generate": True}
    for sampler in ("ddmm", "ddim"):
        torch.testing.assert_close(model.generate(sampler=sampler, **one).latents,
                                   model.generate(sampler="deterministic", **one).latents)


def test_fresh_noise_moves_ddim_toward_ddmm(model):
    """fresh_noise = 1 is ddmm (the same draws), anything between 0 and 1 is neither; outside [0, 1] is refused, and
    so is fresh noise for a sampler other than ddim."""
    def latents(**options):
        return model.generate(seed=3, return_dict_in_generate=True, **FAST, **options).latents

    torch.testing.assert_close(latents(sampler="ddim", fresh_noise=1.0), latents(sampler="ddmm"))
    half = latents(sampler="ddim", fresh_noise=0.5)
    assert not torch.allclose(half, latents(sampler="ddmm"), atol=1e-4)
    assert not torch.allclose(half, latents(sampler="ddim"), atol=1e-4)
    with pytest.raises(ValueError, match="fresh_noise must lie in"):
        model.generate(sampler="ddim", fresh_noise=1.5, **FAST)
    with pytest.raises(ValueError, match="pass sampler='ddim'"):
        model.generate(sampler="ddmm", fresh_noise=0.5, **FAST)


def test_ancestral_sampler_is_ddpms_step_between_ddim_and_ddmm(model):
    """The ancestral step's fresh share is DDPM's posterior standard deviation over the noise at t_next (alpha_bar =
    1 - t): 1 from pure noise, so with two steps it draws exactly what ddmm draws; with more steps it is neither ddmm
    nor ddim; fresh_noise is refused with it."""
    from modeling_zonkey.sampling import ancestral_fresh_share

    for t, s in ((1.0, 0.75), (0.5, 0.48), (0.5, 0.25), (0.3, 0.01)):
        a_t, a_s = 1 - t, 1 - s
        sigma2 = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)  # DDPM's posterior variance of q(z_s | z_t, z0)
        assert ancestral_fresh_share(t, s) ** 2 * s == pytest.approx(sigma2)
    assert ancestral_fresh_share(1.0, 0.98) == 1.0 and ancestral_fresh_share(0.5, 0.495) < 0.15

    def latents(**options):
        return model.generate(seed=3, return_dict_in_generate=True, **options).latents

    torch.testing.assert_close(latents(sampler="ancestral", num_steps=2), latents(sampler="ddmm", num_steps=2))
    four = latents(sampler="ancestral", **FAST)
    assert not torch.allclose(four, latents(sampler="ddmm", **FAST), atol=1e-4)
    assert not torch.allclose(four, latents(sampler="ddim", **FAST), atol=1e-4)
    with pytest.raises(ValueError, match="pass sampler='ddim'"):
        model.generate(sampler="ancestral", fresh_noise=0.5, **FAST)


def test_ddim_sampler_reuses_the_implied_noise():
    """One DDIM step from z at t to t': eps_hat = (z - sqrt(1 - t) z0) / sqrt(t), z' = renoise(z0, t', eps_hat); a
    z that is exactly noised z0 gives back its own noise, so the step lands on z0 noised with the same eps."""
    from types import SimpleNamespace

    from modeling_zonkey.ddmm import add_noise
    from modeling_zonkey.sampling import denoise
    from modeling_zonkey.sphere import to_sphere

    torch.manual_seed(0)
    z0 = to_sphere(torch.randn(3, 32))
    eps = torch.randn(3, 32)
    eps = eps / eps.norm(dim=-1, keepdim=True) * z0.norm(dim=-1, keepdim=True)
    eps = eps - (eps * z0).sum(-1, keepdim=True) / (z0 * z0).sum(-1, keepdim=True) * z0  # orthogonal: no renormalising
    eps = eps / eps.norm(dim=-1, keepdim=True) * z0.norm(dim=-1, keepdim=True)
    z = add_noise(z0, torch.full((3,), 0.64), noise=eps)
    class Decoder:
        self_conditioning = False

        def __call__(self, z, t, condition=None):
            return SimpleNamespace(sequence=z, existence=torch.ones(len(z)))

    level = SimpleNamespace(decoder=Decoder(),
                            compressor=lambda sequence, existence, **_: SimpleNamespace(latents=z0))
    out = denoise(level, z, [0.64, 0.36, 0.0], "ddim", [], torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out, z0)  # the last step (t' = 0) returns the estimate
    one_step = denoise(level, z, [0.64, 0.36], "ddim", [], torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(one_step, add_noise(z0, torch.full((3,), 0.36), noise=eps), atol=1e-5, rtol=1e-5)


def test_clamping_snaps_decoded_windows_to_the_data(model):
    from modeling_zonkey.sphere import expected_norm

    torch.manual_seed(0)
    x0 = torch.randn(3, 8, 16)
    snapped = model.clamp_to_data(x0, level=0)
    table = model.embed_bytes(torch.arange(256))
    distances = torch.cdist(snapped.flatten(0, 1), table)
    assert torch.allclose(distances.min(1).values, torch.zeros(24), atol=1e-2)  # every vector is a byte embedding
    assert torch.equal(model.clamp_to_data(snapped, level=0), snapped)  # a projection: idempotent
    x1 = torch.randn(2, 8, 64)
    latents = model.clamp_to_data(x1, level=1)
    assert latents.shape == x1.shape
    torch.testing.assert_close(latents.norm(dim=-1), torch.full((2, 8), expected_norm(64)))  # compressor outputs
    # the sampler uses it by default; clamp=False is the plain decode -> compress loop
    on = model.generate(seed=2, return_dict_in_generate=True, **FAST).latents
    off = model.generate(seed=2, clamp=False, return_dict_in_generate=True, **FAST).latents
    assert not torch.allclose(on, off, atol=1e-4)


def test_clamping_only_some_positions_or_steps(model, monkeypatch):
    """clamp_min_existence: only positions whose decoded existence is above it are clamped (the rest pass as
    decoded); clamp_max_t: only steps at t <= it clamp. Each chosen position equals the full clamp's."""
    torch.manual_seed(0)
    x1 = torch.randn(2, 8, 64)
    chosen = torch.rand(2, 8) > 0.5
    full, some = model.clamp_to_data(x1, level=1), model.clamp_to_data(x1, level=1, chosen=chosen)
    torch.testing.assert_close(some[chosen], full[chosen], atol=1e-5, rtol=1e-5)
    assert torch.equal(some[~chosen], x1[~chosen])
    seen = []
    original = model.clamp_to_data
    monkeypatch.setattr(model, "clamp_to_data", lambda seq, level, chosen=None, clamp_noise_level=0.0:
                        (level == 1 and seen.append(chosen)) or original(seq, level, chosen, clamp_noise_level))
    model.generate(seed=2, num_steps=4, clamp_max_t=0.5, clamp_min_existence=0.3)
    assert len(seen) == 2  # t = 1, 0.75 skipped; 0.5, 0.25 clamped
    assert all(c is not None and c.dtype == torch.bool for c in seen)
    for name, value in (("clamp_min_existence", 1.0), ("clamp_min_existence", -0.1), ("clamp_max_t", 0.0)):
        with pytest.raises(ValueError, match=name):
            model.generate(**{name: value}, **FAST)


def test_clamp_noise_level_reads_estimates_as_noised(model, monkeypatch):
    """clamp_noise_level t: the level below decodes each estimate at t (not 0) before it is snapped and compressed
    again; generate() hands the option to every clamp; out of [0, 1) is a ValueError naming it."""
    torch.manual_seed(0)
    x1 = torch.randn(2, 8, 64)
    below = model.levels[0]
    decoded = below.decoder(x1.flatten(0, 1), torch.full((16,), 0.4))
    expected = below.compressor(model.clamp_to_data(decoded.sequence, 0), decoded.existence, latents_only=True).latents
    torch.testing.assert_close(model.clamp_to_data(x1, level=1, clamp_noise_level=0.4), expected.view(2, 8, 64))
    assert not torch.allclose(model.clamp_to_data(x1, level=1, clamp_noise_level=0.4), model.clamp_to_data(x1, level=1),
                              atol=1e-3)
    seen = []
    original = model.clamp_to_data
    monkeypatch.setattr(model, "clamp_to_data", lambda seq, level, chosen=None, clamp_noise_level=0.0:
                        seen.append(clamp_noise_level) or original(seq, level, chosen, clamp_noise_level))
    model.generate(seed=2, clamp_noise_level=0.3, **FAST)
    assert seen and set(seen) == {0.3}
    for value in (1.0, -0.1):
        with pytest.raises(ValueError, match="clamp_noise_level"):
            model.generate(clamp_noise_level=value, **FAST)


def test_clamp_noise_level_reaches_every_level_below():
    """On a three-level model, clamping a top-level window decodes at clamp_noise_level at level 1 and at level 0:
    every latent decoded on the way down is an estimate."""
    config = ZonkeyConfig(num_levels=3, hidden_size=[16, 64, 128], num_attention_heads=[2, 4, 4],
                          window_length=[8, 8, 8], num_cls_vectors=[4, 2, 2], compressor_layers=[1, 1, 1],
                          decompressor_layers=[1, 1, 1], denoiser_layers=[1, 1, 1], document_length=[128, 32, 8],
                          max_decoded_segments=[256, 64, 16])
    torch.manual_seed(0)
    model = ZonkeyModel(config).eval()
    seen = set()
    for index, level in enumerate(model.levels):
        level.decoder.register_forward_pre_hook(lambda _, args, i=index: seen.add((i, round(float(args[1][0]), 6))))
    with torch.no_grad():
        assert model.clamp_to_data(torch.randn(1, 8, 128), level=2, clamp_noise_level=0.4).shape == (1, 8, 128)
    assert seen == {(1, 0.4), (0, 0.4)}


def test_output_length_follows_predicted_existence(model, monkeypatch):
    """The number of top-level positions kept is where the decoded existence falls below the threshold."""
    top = model.levels[-1].decoder
    original = top.forward
    window = top.window_length

    def cut_by_latent(noised_latents, t, self_condition=None):  # existence 1 up to a latent-dependent position, then 0
        out = original(noised_latents, t)
        keep = 1 + (noised_latents[:, 0].abs() * 1000).long() % window
        existence = (torch.arange(window)[None] < keep[:, None]).float()
        return DecoderOutput(out.sequence, existence)

    monkeypatch.setattr(top, "forward", cut_by_latent)
    out = model.generate(num_return_sequences=8, seed=0, return_dict_in_generate=True, **FAST)
    kept = (out.existence > 0.5).long().cumprod(1).sum(1)
    assert len(set(kept.tolist())) > 1, "the latent-dependent existence should give different lengths"
    per_sample = lengths(out.sequences)
    assert len(set(per_sample)) > 1, f"all samples have the same length {per_sample}"
    # each kept top-level position is one level-0 latent: at most one level-0 window of bytes
    max_bytes = model.config.window_length[0]
    for k, n in zip(kept.tolist(), per_sample):
        assert 1 <= n <= k * max_bytes, (k, n)


def test_max_new_tokens_and_max_length_count_the_bytes_of_the_sample(model, tokenizer):
    """As in transformers: max_new_tokens is the number of new bytes (Zonkey's tokens), over as many windows as it
    takes; max_length the bytes of the whole output, prompt included, so prompts of different lengths get different
    numbers of new bytes. Without either, one window: the model's own sample length."""
    full = model.generate(num_return_sequences=2, seed=0, **FAST)
    assert max(lengths(full)) > 5
    capped = model.generate(num_return_sequences=2, seed=0, max_new_tokens=5, **FAST)
    assert lengths(capped) == [5, 5] and torch.equal(capped, full[:, :5])
    assert lengths(model.generate(num_return_sequences=2, seed=0, max_length=3, **FAST)) == [3, 3]
    many = model.generate(seed=0, max_new_tokens=4 * max(lengths(full)), **FAST)
    assert lengths(many) == [4 * max(lengths(full))]  # several windows
    prompts = tokenizer(["The river ", "A "], return_tensors="pt", padding=True)
    assert lengths(model.generate(**prompts, seed=0, max_length=40, **FAST)) == [40, 40]
    assert lengths(model.generate(**prompts, seed=0, max_length=40, max_new_tokens=20, **FAST)) == [30, 22]


def test_old_and_alias_names_of_the_options(model, tokenizer):
    """max_new_bytes (the old name of max_new_tokens) still works and warns; max_denoising_steps (transformers'
    diffusion LM's name) is num_steps; one option under two names with two values is an error naming both."""
    with pytest.warns(FutureWarning, match="max_new_bytes is deprecated: use max_new_tokens"):
        old = model.generate(seed=1, max_new_bytes=30, **{**FAST, "num_steps": 3})
    assert torch.equal(old, model.generate(seed=1, max_new_tokens=30, **{**FAST, "num_steps": 3}))
    with pytest.warns(FutureWarning):
        assert ZonkeyGenerationConfig(max_new_bytes=12).max_new_tokens == 12
    fast = {k: v for k, v in FAST.items() if k != "num_steps"}
    assert torch.equal(model.generate(seed=1, max_denoising_steps=3, **fast),
                       model.generate(seed=1, num_steps=3, **fast))
    assert ZonkeyGenerationConfig(max_denoising_steps=9).num_steps == 9
    with pytest.raises(ValueError, match="max_denoising_steps = 3 and num_steps = 4 name the same option"):
        model.generate(seed=1, max_denoising_steps=3, num_steps=4)


def test_unset_options_take_the_declared_defaults(model):
    """An option left None by the call, the config passed and the model's config is filled from
    `_get_default_generation_params()`, as transformers' diffusion LM does; the model's config wins over it."""
    defaults = ZonkeyGenerationConfig._get_default_generation_params()
    resolved = model._prepare_generation_config(ZonkeyGenerationConfig(sampler="ddim"), num_steps=3)
    assert (resolved.num_steps, resolved.sampler, resolved.clamp) == (3, "ddim", defaults["clamp"])
    assert resolved.max_new_tokens is None and resolved.seed is None  # None means something for these
    saved = model.generation_config
    model.generation_config = ZonkeyGenerationConfig(num_steps=7, gap_segments=3)
    try:
        resolved = model._prepare_generation_config(ZonkeyGenerationConfig(num_steps=4))
    finally:
        model.generation_config = saved
    assert (resolved.num_steps, resolved.gap_segments, resolved.sampler) == (4, 3, defaults["sampler"])


def test_caps_apply_to_reconstructions_too(model, tokenizer):
    batch = tokenizer(["the cat sat on the mat."], return_tensors="pt")
    for t in (0.0, 0.3):
        full = model.generate(**batch, noise_level=t, seed=0, **FAST)
        capped = model.generate(**batch, noise_level=t, seed=0, max_new_tokens=4, **FAST)
        assert lengths(full)[0] > 4 and lengths(capped) == [4] and torch.equal(capped[0], full[0, :4])


def test_progress_bar_and_training_mode_are_restored(model, capsys):
    model.train()
    model.generate(seed=0, progress_bar=True, **FAST)
    assert model.training, "generate() must give the model back in the mode it found it"
    model.eval()
    assert "denoising" in capsys.readouterr().err
