"""Level 1 on top of level 0 (issue #23): freezing levels, re-initialising a level under another config, the light
pass's positive and weighting above level 0, the noise level at which a level decodes the level above's estimates,
and the measurements of where bytes are lost on the way down (evaluation/hierarchy.py)."""

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.compressor import info_nce
from modeling_zonkey.evaluation.hierarchy import encode, hierarchy_diagnosis, turn_to_cosine
from modeling_zonkey.level import LevelTargets, SegmentBatch
from modeling_zonkey.segment_splitter import build_segments
from modeling_zonkey.sphere import to_sphere
from modeling_zonkey.training.model_and_data import build_model

pytestmark = pytest.mark.usefixtures("single_thread")

MICRO = Path(__file__).resolve().parents[1] / "configuration" / "zonkey-micro.json"

TEXTS = ["Zonkeys are hybrids of zebras and donkeys; the stripes show on the legs. They are rare.",
         "Hi, zonkey! How are the stripes today? Fine."]


def batch(tokenizer):
    return tokenizer(TEXTS, padding=True, return_tensors="pt")


def with_config(micro_config, **changes) -> ZonkeyConfig:
    return ZonkeyConfig(**{**micro_config.to_dict(), **changes})


# ------------------------------------------------------------------------------------------- freezing
def test_a_frozen_level_gets_no_gradient_and_no_loss_terms(make_model, tokenizer):
    model = make_model().train()
    model.freeze_levels([0])
    torch.manual_seed(0)
    out = model(**batch(tokenizer), return_loss=True)
    assert not any(name.startswith("level0/") or name == "loss/level0" for name in out.loss_terms)
    assert "level1/reconstruction" in out.loss_terms and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.levels[0].parameters())
    assert model.byte_embeddings.weight.grad is None
    moved = [p.grad is not None and p.grad.abs().sum() > 0 for p in model.levels[1].parameters()]
    assert sum(moved) > 0.9 * len(moved)  # nearly every level-1 parameter learns (a few get no loss in one batch)
    # frozen, level 0 encodes as before: the same segmentation and latents as the unfrozen model in eval mode
    model.eval()
    frozen = model(**batch(tokenizer)).levels[0]
    model.freeze_levels(())
    assert all(p.requires_grad for p in model.parameters())
    again = model(**batch(tokenizer)).levels[0]
    assert torch.equal(frozen.boundaries, again.boundaries)
    torch.testing.assert_close(frozen.latents, again.latents.detach())  # SDPA may pick another kernel under autograd


def test_freezing_a_level_above_still_trains_the_level_below_through_it(make_model, tokenizer):
    model = make_model().train()
    model.freeze_levels([1])
    torch.manual_seed(0)
    out = model(**batch(tokenizer), return_loss=True)
    assert not any(name.startswith("level1/") for name in out.loss_terms)
    out.loss.backward()
    assert all(p.grad is None for p in model.levels[1].parameters())
    assert sum(p.grad.abs().sum() for p in model.levels[0].parameters() if p.grad is not None) > 0


def test_a_frozen_splitter_keeps_its_segmentation_while_the_rest_of_its_level_learns(make_model, tokenizer):
    model = make_model().train()
    model.freeze_splitters([0])
    torch.manual_seed(0)
    out = model(**batch(tokenizer), return_loss=True)
    assert not out.levels[0].bos_probs.requires_grad  # no loss reaches p_bos, through the weights or the input
    out.loss.backward()
    splitter = list(model.levels[0].splitter.parameters())
    assert all(p.grad is None and not p.requires_grad for p in splitter)
    assert model.levels[0].compressor.cls_vectors.grad.abs().sum() > 0
    assert model.byte_embeddings.weight.grad.abs().sum() > 0
    assert all(p.requires_grad for p in model.levels[1].splitter.parameters())
    # the freeze outlasts the end of a level freeze (--unfreeze_at_step), and freeze_splitters(()) ends it
    model.freeze_levels([1])
    model.freeze_levels(())
    assert not any(p.requires_grad for p in splitter) and model.levels[0].splitter_frozen
    model.freeze_splitters(())
    assert all(p.requires_grad for p in model.parameters())
    torch.manual_seed(0)
    assert model(**batch(tokenizer), return_loss=True).levels[0].bos_probs.requires_grad
    with pytest.raises(ValueError, match="must lie in"):
        model.freeze_splitters([2])


@pytest.mark.parametrize("levels, message", [([2], "must lie in"), ([0, 1], "nothing would train"), ([-1], "lie in")])
def test_freeze_levels_refuses_levels_it_cannot_freeze(make_model, levels, message):
    with pytest.raises(ValueError, match=message):
        make_model().freeze_levels(levels)


def test_training_level1_alone_on_a_frozen_level0_lowers_its_loss(micro_config, tokenizer):
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config).train()
    model.freeze_levels([0])
    level0 = {k: v.clone() for k, v in model.levels[0].state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    inputs = batch(tokenizer)
    losses = []
    for step in range(25):
        torch.manual_seed(step % 5)  # the same five draws of the sampled noise, over and over
        loss = model(**inputs, return_loss=True).loss_terms["level1/reconstruction"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert all(torch.equal(v, model.levels[0].state_dict()[k]) for k, v in level0.items())


def test_reinit_levels_keeps_the_other_levels_and_draws_the_named_one_afresh(micro_folder, tmp_path):
    config = json.loads(MICRO.read_text())
    config["num_cls_vectors"][1] = 4  # level 1's CLS vectors: another shape, so level 1 must start afresh
    (tmp_path / "wider.json").write_text(json.dumps(config))
    args = argparse.Namespace(config_name=str(tmp_path / "wider.json"), model_name_or_path=str(micro_folder),
                              tokenizer_name=None, reinit_levels=[1], freeze_levels=[0])
    model, _ = build_model(args)
    trained = ZonkeyModel.from_pretrained(micro_folder)
    assert model.config.num_cls_vectors == [4, 4] and model.frozen_levels == {0}
    kept = {k: v for k, v in trained.state_dict().items() if not k.startswith("levels.1.")}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in kept.items())
    assert state["levels.1.compressor.cls_vectors"].shape == (4, 64)
    fresh = [k for k in state if k.startswith("levels.1.") and state[k].shape == trained.state_dict()[k].shape
             and not torch.equal(state[k], trained.state_dict()[k])]
    assert len(fresh) > 10
    # a kept level that no longer fits is refused, naming the weight
    config["num_cls_vectors"] = [2, 2]
    config["hidden_size"] = [16, 32]
    (tmp_path / "narrow.json").write_text(json.dumps(config))
    args.config_name = str(tmp_path / "narrow.json")
    with pytest.raises(ValueError, match="kept weight .* does not fit the new config"):
        build_model(args)


def test_a_preset_with_more_layers_grows_the_folder_with_identity_blocks(micro_folder, tmp_path, tokenizer):
    """--config_name deeper than --model_name_or_path: the new blocks start as the identity (the grown model computes
    what the folder did) and their output projections receive gradients."""
    config = json.loads(MICRO.read_text())
    config["denoiser_layers"][1] += 2
    config["decompressor_layers"][1] += 1
    (tmp_path / "deeper.json").write_text(json.dumps(config))
    args = argparse.Namespace(config_name=str(tmp_path / "deeper.json"), model_name_or_path=str(micro_folder),
                              tokenizer_name=None, reinit_levels=None, freeze_levels=None)
    grown, _ = build_model(args)
    trained = ZonkeyModel.from_pretrained(micro_folder).eval()
    grown.eval()
    old, new = trained.config.denoiser_layers[1], config["denoiser_layers"][1]
    assert len(grown.levels[1].decoder.denoiser.layers) == new
    decoder = grown.levels[1].decoder
    latents = to_sphere(torch.randn(3, trained.config.num_cls_vectors[1] * trained.config.hidden_size[1]))
    t = torch.tensor([0.0, 0.5, 0.9])
    with torch.no_grad():
        assert torch.allclose(decoder(latents, t).sequence, trained.levels[1].decoder(latents, t).sequence, atol=1e-6)
        losses = []
        for model in (grown, trained):
            torch.manual_seed(0)  # the same noise draws: the whole loss, level 1's decoder terms included
            losses.append(model(**batch(tokenizer), return_loss=True).loss_terms)
        assert losses[0].keys() == losses[1].keys()
        assert all(torch.allclose(losses[0][k], losses[1][k], atol=1e-5) for k in losses[0])
    decoder(latents, t).sequence.pow(3).sum().backward()
    for block in list(decoder.denoiser.layers[old:]) + [decoder.decompressor.layers[-1]]:
        projection = getattr(block, "attn", block).o_proj
        assert projection.weight.abs().sum() == 0 and projection.weight.grad.abs().sum() > 0
    # the blocks the folder had are its own, not zeroed
    assert decoder.denoiser.layers[old - 1].attn.o_proj.weight.abs().sum() > 0


# ------------------------------------------------------------------------------- light pass above level 0
@pytest.fixture(scope="module")
def upper_level(micro_config):
    """Level 1 of a micro model on random level-0-like vectors: (level, sub, latents)."""
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config).train()
    level = model.levels[1]
    x = to_sphere(torch.randn(2, 30, micro_config.hidden_size[1]))
    valid = torch.ones(2, 30, dtype=torch.bool)
    split = level.splitter(x, valid)
    segments = build_segments(split.bos_probs, split.boundaries, valid, level.window_length, split.log_not_bos)
    windows = segments.gather(x)
    latents = level.compressor(windows, segments.existence).latents
    sub = SegmentBatch.take(segments, windows, torch.arange(len(latents)), LevelTargets(x), valid)
    return level, sub, latents


def light_loss(level, sub, latents, config, seed=4):
    """The light pass's loss ("ddmm") under `config`, with the same draws for every config."""
    before, level.config = level.config, config
    try:
        torch.manual_seed(seed)
        return level.diffusion_terms(sub, level.clean_and_heavy_passes(latents)).ddmm
    finally:
        level.config = before


def test_the_direct_positive_is_never_easier_than_the_path_positive(upper_level, micro_config):
    """The path positive is the best of X2 + lambda (X - X2) over lambda in {0, 1, lambda*}: lambda = 1 is X itself,
    so its loss is at most the direct positive's, and lower where copying X2 (lambda = 0) scores better."""
    level, sub, latents = upper_level
    path = light_loss(level, sub, latents, with_config(micro_config, ddmm_positive="path"))
    direct = light_loss(level, sub, latents, with_config(micro_config, ddmm_positive="direct"))
    assert torch.isfinite(direct) and direct > path + 1e-3
    # direct: the plain InfoNCE of X3 against X (the same draws, so the same X3)
    calls = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(output))
    try:
        again = light_loss(level, sub, latents, with_config(micro_config, ddmm_positive="direct",
                                                            infonce_negatives="all"))
    finally:
        handle.remove()
    x3 = calls[-1].sequence
    real = sub.in_document
    losses = torch.zeros(real.shape)
    losses[real] = info_nce(x3[real], sub.windows[real], sub.targets.vectors[sub.targets_valid], None)
    torch.testing.assert_close(again, sub.average(losses), rtol=1e-5, atol=1e-6)


def test_one_minus_t_weights_each_light_row_by_its_heavy_noise_level(upper_level, micro_config):
    level, sub, latents = upper_level
    uniform_config = with_config(micro_config, ddmm_positive="direct", infonce_negatives="all")
    weighted_config = with_config(micro_config, ddmm_positive="direct", infonce_negatives="all",
                                  light_pass_weight="one_minus_t")
    torch.manual_seed(4)
    t1 = level.clean_and_heavy_passes(latents).t1
    weighted = light_loss(level, sub, latents, weighted_config)
    # the same X3 rows, reweighted by hand: one loss per row, then (1 - t1) / mean(1 - t1) times each
    calls = []
    handle = level.decoder.register_forward_hook(lambda module, args, output: calls.append(output))
    try:
        light_loss(level, sub, latents, uniform_config)
    finally:
        handle.remove()
    level.config = uniform_config
    per_position = level.reconstruction(calls[-1].sequence, sub)
    level.config = micro_config
    weight = (1 - t1) / (1 - t1).mean()
    torch.testing.assert_close(weighted, sub.average(per_position * weight[:, None]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weighted, sub.average(per_position))


@pytest.mark.parametrize("field, value", [("ddmm_positive", "lambda"), ("light_pass_weight", "t"),
                                          ("handoff_noise_level", 1.5), ("handoff_noise_level", "0.1")])
def test_config_refuses_unknown_light_pass_and_handoff_settings(micro_config, field, value):
    with pytest.raises(ValueError, match=field):
        with_config(micro_config, **{field: value})


# ----------------------------------------------------------------------------------------- handoff
def test_the_levels_below_decode_the_top_at_the_handoff_noise_level(make_model, tokenizer):
    model = make_model()
    inputs = batch(tokenizer)
    seen = []
    handle = model.levels[0].decoder.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    try:
        default = model.reconstruct(**inputs)
        handed = model.reconstruct(**inputs, handoff_noise_level=0.3)
        model.reconstruct(**inputs, from_level=0, handoff_noise_level=0.3)
    finally:
        handle.remove()
    assert (seen[0] == 0).all() and torch.allclose(seen[1], torch.tensor(0.3)) and (seen[2] == 0).all()
    assert any(not torch.equal(a, b) for a, b in zip(default, handed))  # the decoder reads t
    config = model.config
    config.handoff_noise_level = 0.3
    try:
        assert all(torch.equal(a, b) for a, b in zip(model.reconstruct(**inputs), handed))
    finally:
        config.handoff_noise_level = 0.0


# --------------------------------------------------------------------------------------- diagnosis
def test_turn_to_cosine_gives_that_cosine_on_the_sphere():
    vectors = to_sphere(torch.randn(50, 64))
    for cosine in (0.99, 0.9, 0.5):
        turned = turn_to_cosine(vectors, cosine, torch.Generator().manual_seed(0))
        torch.testing.assert_close(F.cosine_similarity(turned, vectors, dim=-1), torch.full((50,), cosine))
        torch.testing.assert_close(turned.norm(dim=-1), vectors.norm(dim=-1))


def test_hierarchy_diagnosis_measures_what_each_level_hands_down(make_model, tokenizer):
    model = make_model()
    inputs = batch(tokenizer)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    results = hierarchy_diagnosis(model, [(ids, mask)], cosines=(1.0, 0.5), handoff_levels=(0.0,))
    level1 = results["level1"]
    assert len(level1["decoded_cosine_by_position"]) == model.config.window_length[1]
    assert -1 <= level1["decoded_cosine"] <= 1 and 0 <= level1["share_above_0.95"] <= level1["share_above_0.9"] <= 1
    # cos = 1 hands level 0 its own latents: level 0's reconstruction, exactly
    from modeling_zonkey.evaluation.metrics import byte_accuracy

    correct, total = byte_accuracy(model.reconstruct(ids, mask, from_level=0), ids, mask)
    assert level1["sensitivity"]["cos=1"]["t=0"]["byte_accuracy"] == pytest.approx(correct / total)
    # the oracle top is model.reconstruct from the top
    correct, total = byte_accuracy(model.reconstruct(ids, mask), ids, mask)
    assert level1["top"]["t=0"]["oracle"]["byte_accuracy"] == pytest.approx(correct / total)
    encoded = encode(model, ids, mask)
    assert [len(g) for g in encoded.gaps[1]] == [len(r) for r in encoded.latents[1]]


def test_the_regression_term_is_the_per_byte_mean_of_one_minus_cosine_above_level_0(make_model, tokenizer,
                                                                                       micro_config):
    from modeling_zonkey.level import cosine_distance

    model = make_model().train()
    torch.manual_seed(0)
    assert not any(name.endswith("/regression") for name in model(**batch(tokenizer), return_loss=True).loss_terms)
    model.config = with_config(micro_config, loss_weights={"regression": 0.5})
    for level in model.levels:
        level.config = model.config
    torch.manual_seed(0)
    out = model(**batch(tokenizer), return_loss=True)
    assert "level1/regression" in out.loss_terms and "level0/regression" not in out.loss_terms
    assert 0 < out.loss_terms["level1/regression"] < 10  # (1 - cos) <= 2, times the density factor
    grads = torch.autograd.grad(out.loss_terms["level1/regression"], list(model.levels[1].decoder.parameters()),
                                allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    prediction = torch.randn(3, 4, 8)
    windows = torch.randn(3, 4, 8)
    inside = torch.tensor([[1, 1, 1, 0]] * 3, dtype=torch.bool)
    sub = argparse.Namespace(windows=windows, in_document=inside)
    expected = (1 - F.cosine_similarity(prediction, windows, dim=-1)) * inside
    torch.testing.assert_close(cosine_distance(prediction, sub), expected)


# ------------------------------------------------------------------------------------------- the recipe preset
def test_the_phrases_preset_is_tiny_sentences_with_the_level1_recipe_and_trains_level1(tokenizer):
    """configuration/zonkey-tiny-phrases.json differs from tiny-sentences only where
    docs/research/level1-autoencoder.md says (level-1 weight, direct positive, regression term, C_1, window), and
    level 1 gets gradient from it."""
    folder = MICRO.parent
    sentences = json.loads((folder / "zonkey-tiny-sentences.json").read_text())
    phrases = json.loads((folder / "zonkey-tiny-phrases.json").read_text())
    changed = {key for key in sentences.keys() | phrases.keys() if sentences.get(key) != phrases.get(key)}
    assert changed == {"level_weights", "ddmm_positive", "loss_weights", "num_cls_vectors", "window_length"}
    assert phrases["window_length"][1] == 8 and phrases["num_cls_vectors"][1] == 4
    assert phrases["ddmm_positive"] == "direct" and phrases["level_weights"][1] == 1.0
    config = ZonkeyConfig.from_json_file(folder / "zonkey-tiny-phrases.json")
    assert config.loss_weights["regression"] == 1.0
    torch.manual_seed(0)
    model = ZonkeyModel(config).train()
    output = model(**batch(tokenizer), return_loss=True)
    assert torch.isfinite(output.loss) and output.loss_terms["level1/regression"] > 0
    output.loss.backward()
    level1 = [p.grad.norm().item() for p in model.levels[1].decoder.parameters() if p.grad is not None]
    assert level1 and max(level1) > 0


def test_the_ten_minute_preset_is_the_phrases_preset_at_256_byte_documents():
    """configuration/zonkey-tiny-phrases-256.json (the README's main command) is zonkey-tiny-phrases with the document
    length of zonkey-tiny (the decoder caps are already the same): docs/research/ten-minute-demo.md, nothing else."""
    folder = MICRO.parent
    phrases = json.loads((folder / "zonkey-tiny-phrases.json").read_text())
    short = json.loads((folder / "zonkey-tiny-phrases-256.json").read_text())
    tiny = json.loads((folder / "zonkey-tiny.json").read_text())
    changed = {key for key in phrases.keys() | short.keys() if phrases.get(key) != short.get(key)}
    assert changed == {"document_length"}
    assert short["document_length"] == tiny["document_length"] == [256, 64]
    assert short["max_decoded_segments"] == tiny["max_decoded_segments"] == phrases["max_decoded_segments"]
    assert ZonkeyConfig.from_json_file(folder / "zonkey-tiny-phrases-256.json").document_length == [256, 64]


def test_the_small_preset_is_the_ten_minute_preset_one_and_a_half_times_as_wide():
    """configuration/zonkey-small.json (the size the scaling check of docs/research/model-size.md chose for the long
    run) is zonkey-tiny-phrases-256 with hidden sizes [96, 192] instead of [64, 128], and nothing else."""
    folder = MICRO.parent
    short = json.loads((folder / "zonkey-tiny-phrases-256.json").read_text())
    small = json.loads((folder / "zonkey-small.json").read_text())
    assert {key for key in short.keys() | small.keys() if short.get(key) != small.get(key)} == {"hidden_size"}
    config = ZonkeyConfig.from_json_file(folder / "zonkey-small.json")
    assert config.hidden_size == [96, 192] and config.latent_size(0) == 192
    with torch.device("meta"):
        assert ZonkeyModel(config).num_parameters() == 4_868_934
