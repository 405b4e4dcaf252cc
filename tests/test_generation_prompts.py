"""generate() from text: reconstruction at a noise level, continuation that keeps its prompt byte for byte and is
conditioned by it, infilling that keeps everything outside the gap, and a one-level model in every mode."""


import pytest
import torch
from test_generation import FAST, lengths

from modeling_zonkey import ZonkeyConfig, ZonkeyModel

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)


# ------------------------------------------------------------------------------- from text / prompts
def test_noise_level_zero_is_the_models_reconstruction(model, tokenizer):
    batch = tokenizer(["the cat sat on the mat.", "a dog ran off."], padding=True, return_tensors="pt")
    for level in (0, 1):
        expected = model.reconstruct(**batch, from_level=level)
        got = model.generate(**batch, noise_level=0.0, level=level)
        for row, ids in enumerate(expected):
            assert torch.equal(got[row, : len(ids)], ids) and (got[row, len(ids):] == 256).all()


def test_noise_level_changes_the_output_with_the_noise(model, tokenizer):
    batch = tokenizer(["the cat sat on the mat."], return_tensors="pt")
    clean = model.generate(**batch, noise_level=0.0)
    light = model.generate(**batch, noise_level=0.3, seed=0, num_return_sequences=2, **FAST)
    assert light.shape[0] == 2
    assert not torch.equal(model.generate(**batch, noise_level=0.3, seed=0, **FAST), clean)
    single = model.generate(**batch, noise_level=0.3, seed=0, **FAST)[0]
    assert torch.equal(single[single != 256], light[0][light[0] != 256])  # same seed, same text


def test_continuation_keeps_its_prefix_byte_for_byte(model, tokenizer):
    prompts = ["the cat sat on ", "once upon a time, é "]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    out = model.generate(**batch, seed=0, num_return_sequences=2, **FAST)
    assert out.shape[0] == 4
    for i, row in enumerate(out):
        prefix = batch["input_ids"][i // 2][batch["attention_mask"][i // 2].bool()]
        n = len(prefix)
        assert torch.equal(row[:n], prefix)
        assert (row[n:] != 256).sum() >= 1, "a continuation adds at least one byte"


def test_the_prompt_conditions_the_generated_latents(model, tokenizer):
    """Replacement in latent space: with the same seed, different prompts give different generated windows."""
    outs = [model.generate(**tokenizer([p], return_tensors="pt"), seed=0, return_dict_in_generate=True, **FAST)
            for p in ("the cat sat on ", "zebras quickly ")]
    assert not torch.allclose(outs[0].latents, outs[1].latents, atol=1e-4)


def test_infilling_keeps_everything_outside_the_gap(model, tokenizer):
    before = tokenizer(["the cat ", "in 1999, "], padding=True, return_tensors="pt")
    after = tokenizer(["on the mat.", "he left."], padding=True, return_tensors="pt")
    out = model.generate(**before, suffix_ids=after["input_ids"], suffix_attention_mask=after["attention_mask"],
                         seed=0, gap_segments=2, **FAST)
    for i, row in enumerate(out):
        prefix = before["input_ids"][i][before["attention_mask"][i].bool()]
        suffix = after["input_ids"][i][after["attention_mask"][i].bool()]
        real = row[row != 256]
        assert torch.equal(real[: len(prefix)], prefix)
        assert torch.equal(real[len(real) - len(suffix):], suffix)
        assert len(real) > len(prefix) + len(suffix), "the gap was filled with at least one byte"


def test_one_level_model_generates_in_every_mode(tokenizer):
    config = ZonkeyConfig(num_levels=1, hidden_size=[16], num_attention_heads=[2], window_length=[8],
                          num_cls_vectors=[4], compressor_layers=[1], decompressor_layers=[1], denoiser_layers=[1],
                          document_length=[64], max_decoded_segments=[64], level_weights=[1.0])
    torch.manual_seed(0)
    model = ZonkeyModel(config).eval()
    assert 1 <= lengths(model.generate(seed=0, **FAST))[0] <= 8
    prompt = tokenizer(["the cat "], return_tensors="pt")
    assert torch.equal(model.generate(**prompt, seed=0, **FAST)[0, :8], prompt["input_ids"][0])
    suffix = tokenizer(["mat"], return_tensors="pt")["input_ids"]
    filled = model.generate(**prompt, suffix_ids=suffix, seed=0, gap_segments=3, **FAST)[0]
    assert len(filled) == 8 + 3 + 3 and torch.equal(filled[-3:], suffix[0])  # 3 gap positions are 3 bytes here
    assert torch.equal(model.generate(**prompt, noise_level=0.0), model.reconstruct(**prompt)[0][None])
    long = model.generate(**prompt, seed=0, max_new_tokens=30, **FAST)[0]  # long text: byte vectors, no stitching
    assert len(long) == 8 + 30 and torch.equal(long[:8], prompt["input_ids"][0])
    assert lengths(model.generate(num_return_sequences=2, seed=0, max_new_tokens=30, **FAST)) == [30, 30]
    long_fill = model.generate(**prompt, suffix_ids=suffix, seed=0, max_new_tokens=20, **FAST)[0]
    assert len(long_fill) >= 8 + 20 + 3 and torch.equal(long_fill[-3:], suffix[0])
