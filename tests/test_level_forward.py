"""One hierarchy level (modeling_zonkey/level.py), its plumbing and its forward: pad_by_document and
chunk_documents between levels (every latent kept, in order, with its gradient), how ZonkeyModel chunks level 0's
latents into level 1, the level's forward (latents padded by document, the named loss terms with targets) and
decode. The loss terms themselves are in test_level_losses.py, the decoder passes in test_level_decoder_passes.py."""

import math

import pytest
import torch
from test_level_losses import D

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.level import LevelTargets, chunk_documents, pad_by_document
from modeling_zonkey.sphere import expected_norm, to_sphere

pytestmark = pytest.mark.usefixtures("single_thread")

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
