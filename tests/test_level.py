"""One hierarchy level (modeling_zonkey/level.py): the chunk / pad plumbing between levels, the level's forward,
its loss terms (reconstruction, existence, the clean / heavy / light decoder passes, the per-byte average) and
decode."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.compressor import info_nce
from modeling_zonkey.ddmm import add_noise, light_noise_levels
from modeling_zonkey.decoder import DecoderOutput
from modeling_zonkey.level import LevelTargets, SegmentBatch, chunk_documents, pad_by_document
from modeling_zonkey.segment_splitter import build_segments
from modeling_zonkey.sphere import cosine_logits, expected_norm, to_sphere

pytestmark = pytest.mark.usefixtures("single_thread")

D, L = 16, 8  # the micro preset's level 0: hidden size, window length

TEXTS = [  # three documents of different lengths, padded to the longest (at most document_length[0] = 128 bytes)
    ("Zonkeys are hybrids of zebras and donkeys; the stripes usually show on the legs, rarely on the body, "
     "and they are"),
    "Hi, zonkey! How are the stripes today?",
    "A zebra.",
]


# --------------------------------------------------------------------------------- chunk / pad round trip
def flat_documents(counts: list[int], width: int = 3, seed: int = 0):
    """Distinct per-segment values (M, width), their document ids (sorted, as the model flattens them) and counts."""
    counts_t = torch.tensor(counts)
    document = torch.repeat_interleave(torch.arange(len(counts)), counts_t)
    values = torch.randn(len(document), width, generator=torch.Generator().manual_seed(seed))
    values[:, 0] = torch.arange(len(document), dtype=values.dtype) + 1  # nonzero and distinct: a lost one shows
    return values, document, counts_t


@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_chunk_and_pad_round_trip_never_truncates(chunk):
    """Documents shorter than, equal to, one longer than and several times the chunk length, in one batch whose
    shorter rows are padding: pad_by_document then chunk_documents give back every value, in order, each once."""
    counts = [c for c in (chunk - 1, chunk, chunk + 1, 3 * chunk, 3 * chunk + 2, 1) if c > 0]
    values, document, counts_t = flat_documents(counts)

    padded, mask = pad_by_document(values, document, counts_t)
    assert padded.shape == (len(counts), max(counts), values.shape[1])
    assert mask.sum(1).tolist() == counts
    assert torch.equal(mask, torch.arange(max(counts))[None] < counts_t[:, None])  # left-aligned, padding after
    assert torch.equal(padded[mask], values)
    assert (padded[~mask] == 0).all()

    rows, valid, parent = chunk_documents(padded[mask], document, counts_t, chunk)
    per_document = [-(-c // chunk) for c in counts]  # ceil: a chunk for every started block, none dropped
    assert rows.shape == (sum(per_document), chunk, values.shape[1]) and valid.shape == rows.shape[:2]
    assert torch.equal(parent, torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(per_document)))
    assert torch.equal(rows[valid], values)  # every position, in order
    assert (rows[~valid] == 0).all()
    for r, count in enumerate(counts):
        mine = valid[parent == r]
        lengths = mine.sum(1).tolist()
        assert sum(lengths) == count and all(n == chunk for n in lengths[:-1]) and 1 <= lengths[-1] <= chunk
        assert torch.equal(mine, torch.arange(chunk)[None] < mine.sum(1, keepdim=True))  # left-aligned
        assert torch.equal(rows[parent == r][mine], values[document == r])  # the document, reassembled
    # and back: the chunks of a document padded again are the document
    repadded, remask = pad_by_document(rows[valid], document, counts_t)
    assert torch.equal(repadded, padded) and torch.equal(remask, mask)


def test_chunk_documents_keeps_gradients_and_dtype():
    values, document, counts = flat_documents([5, 2], seed=1)
    values = values.to(torch.float64).requires_grad_(True)
    rows, valid, _ = chunk_documents(values, document, counts, 3)
    assert rows.dtype == torch.float64
    weights = torch.randn(rows.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (rows * weights).sum().backward()
    torch.testing.assert_close(values.grad, weights[valid], atol=0, rtol=0)  # no detach between levels


@pytest.fixture(scope="module")
def encoded(make_model, tokenizer):
    """A perturbed micro model in eval mode, a padded batch of TEXTS and the number of level-0 segments per row."""
    model = make_model(seed=2)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        counts = model(**batch).levels[0].latent_mask.sum(1)
    assert len(set(counts.tolist())) == len(TEXTS)  # rows of different lengths: the shorter ones are padded
    return model, batch, counts


def test_the_model_chunks_every_level0_latent_into_level1(encoded):
    """In ZonkeyModel, level 1 reads each row's level-0 latents chunked into documents of document_length[1] slots:
    for document lengths around each row's segment count (one less, equal, one more, a third, longer than all),
    level 1's input rows, reassembled by parent, are exactly that row's latents; none is dropped."""
    base, batch, counts = encoded
    low, high = int(counts.min()), int(counts.max())
    with torch.no_grad():
        reference = base(**batch).levels[0].latents
    for length in sorted({max(1, low - 1), low, low + 1, max(1, high // 3), high, high + 3}):
        config = ZonkeyConfig(**{**base.config.to_dict(), "document_length": [128, length]})
        model = ZonkeyModel(config).eval()
        model.load_state_dict(base.state_dict())
        seen = []
        handle = model.levels[1].register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[:3]))
        try:
            with torch.no_grad():
                output = model(**batch)
        finally:
            handle.remove()
        x, valid, parent = seen[0]
        level0, level1 = output.levels
        assert x.shape[1] == length and torch.equal(level1.parent, parent) and torch.equal(level1.valid, valid)
        assert torch.equal(parent, torch.repeat_interleave(torch.arange(len(TEXTS)), (counts + length - 1) // length))
        for row in range(len(TEXTS)):
            chunks = parent == row
            assert torch.equal(x[chunks][valid[chunks]], level0.latents[row][level0.latent_mask[row]]), (length, row)
        # the level-0 encoding does not depend on how level 1 is cut
        torch.testing.assert_close(level0.latents, reference, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ forward
@torch.no_grad()
def test_level_forward_pads_the_compressed_segments_by_document(encoded):
    """forward: the latents of each row's segments, in order, padded to (B, S, C d) with the latent mask; the
    parent passes through; eval mode thresholds p_bos; no loss terms without targets."""
    model, batch, counts = encoded
    level = model.levels[0]
    x = model.embed_bytes(batch["input_ids"])
    valid = batch["attention_mask"].bool()
    parent = torch.tensor([5, 7, 9])
    out = level(x, valid, parent)
    segments = out.segments
    assert torch.equal(out.parent, parent) and torch.equal(out.valid, valid) and out.loss_terms == {}
    assert torch.equal(out.latent_mask.sum(1), segments.counts) and torch.equal(segments.counts, counts)
    assert out.latents.shape == (3, int(counts.max()), level.num_cls * D)
    latents = level.compressor(segments.gather(x), segments.existence).latents
    torch.testing.assert_close(out.latents[out.latent_mask], latents, atol=1e-6, rtol=1e-6)
    assert (out.latents[~out.latent_mask] == 0).all()
    thresholded = (out.bos_probs > model.config.existence_threshold) & valid  # eval mode: p_bos > threshold
    assert (out.boundaries | ~thresholded).all() and not out.boundaries[~valid].any()
    again = level(x, valid, parent)  # eval: deterministic
    assert torch.equal(again.latents, out.latents) and torch.equal(again.boundaries, out.boundaries)


def test_level_loss_terms_are_named_finite_scalars(make_model, tokenizer):
    """With targets, a level returns every named, unweighted loss term; level 1 adds the masked-vector term."""
    model = make_model(seed=3, perturb=False).train()
    batch = tokenizer(TEXTS[1:], padding=True, return_tensors="pt")
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    x = model.embed_bytes(ids)
    torch.manual_seed(0)
    vocabulary = to_sphere(model.byte_embeddings.weight[:256])
    out0 = model.levels[0](x, valid, torch.arange(2), LevelTargets(x, ids, vocabulary))
    names = {"patch", "short_segment", "compression", "anti_collapse", "reconstruction", "stitcher_position",
             "stitcher_sequence", "denoising", "ddmm", "existence"}
    assert set(out0.loss_terms) == names
    x1, valid1, parent1 = chunk_documents(out0.latents[out0.latent_mask], out0.segments.document,
                                          out0.segments.counts, model.config.document_length[1])
    out1 = model.levels[1](x1, valid1, parent1, LevelTargets(x1))
    assert set(out1.loss_terms) == names | {"masked_vector"}
    for key, value in [*out0.loss_terms.items(), *out1.loss_terms.items()]:
        assert value.dim() == 0 and torch.isfinite(value), key
    # end to end: level 1's reconstruction reaches the level-0 compressor (no detach between levels)
    grads = torch.autograd.grad(out1.loss_terms["reconstruction"], list(model.levels[0].compressor.parameters()),
                                allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0


# ------------------------------------------------------------------------------------------ losses
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


# ------------------------------------------------------------------------------------------ decode
@torch.no_grad()
def test_decode_is_the_decoder_at_t0_then_the_stitcher(make_model):
    """decode: one row's latents at t = 0 through the decoder, assembled by the stitcher; cutoff defaults to
    config.existence_threshold, given gaps are used as the offsets."""
    model = make_model(seed=14)
    level = model.levels[0]
    latents = to_sphere(torch.randn(3, level.num_cls * D, generator=torch.Generator().manual_seed(15)))
    decoded = level.decoder(latents, torch.zeros(3))
    out = level.decode(latents)
    expected = level.stitcher.assemble(decoded.sequence, decoded.existence, None, model.config.existence_threshold)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert out.shape[1] == D and torch.equal(level.decode(latents, cutoff=model.config.existence_threshold), out)
    gaps = torch.tensor([3, 5, 4])  # offsets of segments 2 and 3, then the last segment's length
    given = level.decode(latents, gaps, refine=False)
    assert given.shape == (3 + 5 + 4, D)
    torch.testing.assert_close(given, level.stitcher.assemble(decoded.sequence, decoded.existence, gaps, 0.5, False))
    torch.testing.assert_close(given[:3], decoded.sequence[0, :3], atol=0, rtol=0)
    assert math.isclose(given.norm(dim=-1).mean().item(), expected_norm(D), rel_tol=1e-4)


# ------------------------------------------------------- decoder passes and their per-byte losses
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
