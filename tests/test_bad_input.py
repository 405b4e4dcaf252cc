"""Invalid configurations and invalid model inputs fail early with a ValueError that names the problem."""

import json
import re

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

# the micro preset, spelled out so each case changes one thing
MICRO = dict(num_levels=2, hidden_size=[16, 64], num_attention_heads=[2, 4], window_length=[8, 8],
             num_cls_vectors=[4, 2], compressor_layers=[1, 1], decompressor_layers=[1, 1], denoiser_layers=[1, 1],
             document_length=[128, 32], max_decoded_segments=[256, 64], num_negatives=15, masked_vector_negatives=15)

BAD_CONFIGS = {
    "list_too_long": (dict(hidden_size=[16, 64, 128]), ["hidden_size", "3 entries", "num_levels = 2"]),
    "list_too_short": (dict(window_length=[8]), ["window_length", "1 entries"]),
    "levels_vs_lists": (dict(num_levels=3), ["entries", "num_levels = 3"]),
    "zero_levels": (dict(num_levels=0), ["num_levels"]),
    "zero_layers": (dict(compressor_layers=[1, 0]), ["compressor_layers", "positive integer"]),
    "float_in_list": (dict(document_length=[128.0, 32]), ["document_length", "positive integer"]),
    "heads_do_not_divide": (dict(num_attention_heads=[3, 4]),
                            ["hidden_size[0]", "num_attention_heads[0]", "divisible"]),
    "odd_head_size": (dict(hidden_size=[12, 48], num_attention_heads=[4, 4]), ["hidden_size[0]", "even head size"]),
    "latent_mismatch": (dict(hidden_size=[16, 32]), ["hidden_size[1]", "num_cls_vectors[0] * hidden_size[0]", "64"]),
    "window_shorter_than_cls": (dict(window_length=[3, 8]), ["num_cls_vectors[0]", "window_length[0]"]),
    "window_too_short": (dict(window_length=[8, 1], num_cls_vectors=[4, 1]), ["window_length[1]", "at least 3"]),
    # #28 (found by tests/test_properties.py): 2 passed, then the splitter's prior was log(0); a bare number was
    # "'int' object is not iterable"
    "window_of_two": (dict(window_length=[8, 2], num_cls_vectors=[4, 1]), ["window_length[1]", "at least 3"]),
    "bare_number": (dict(hidden_size=16), ["hidden_size must be a list", "16"]),
    "unknown_loss_weight": (dict(loss_weights={"reconstrution": 1.0}), ["loss_weights", "reconstrution"]),
    "negative_loss_weight": (dict(loss_weights={"patch": -1.0}), ["loss_weights", ">= 0"]),
    "bad_ddmm_objective": (dict(ddmm_objective="multi"), ["ddmm_objective", "'multi'"]),
    "bad_time_embedding": (dict(time_embedding="learned"), ["time_embedding"]),
    "even_conv_kernel": (dict(splitter_conv_kernels=[3, 4]), ["splitter_conv_kernels", "odd"]),
    "bad_vocab": (dict(vocab_size=300), ["vocab_size", "pad_token_id"]),
    "bad_vocab_with_matching_pad": (dict(vocab_size=300, pad_token_id=299),  # #16 item 9: was accepted
                                    ["vocab_size must be 257", "fixed", "300 / 299"]),
    "nan_level_weight": (dict(level_weights=[1.0, float("nan")]), ["level_weights", "finite number >= 0", "nan"]),
    "inf_regularizer_level_weight": (dict(regularizer_level_weights=[float("inf"), 1.0]),
                                     ["regularizer_level_weights", "finite number >= 0", "inf"]),
    "nan_loss_weight": (dict(loss_weights={"patch": float("nan")}), ["loss_weights['patch']", "finite", "nan"]),
    "inf_loss_weight": (dict(loss_weights={"denoising": float("inf")}), ["loss_weights['denoising']", "finite", "inf"]),
    "text_loss_weight": (dict(loss_weights={"patch": "10"}), ["loss_weights['patch']", "number", "'10'"]),
    "bad_pad": (dict(pad_token_id=0), ["pad_token_id"]),
    "light_noise_too_big": (dict(light_noise_scale=0.5), ["light_noise_scale"]),
    "mask_probability_one": (dict(mask_probability=1.0), ["mask_probability"]),
    "existence_threshold_zero": (dict(existence_threshold=0.0), ["existence_threshold"]),
    "existence_flag_not_bool": (dict(denoiser_existence="yes"), ["denoiser_existence", "true or false"]),
    "zero_initializer_factor": (dict(initializer_factor=0.0), ["initializer_factor"]),
    "zero_negatives": (dict(num_negatives=0), ["num_negatives"]),
    "level_weights_length": (dict(level_weights=[1.0]), ["level_weights", "per level"]),
    "negative_level_weight": (dict(level_weights=[1.0, -0.5]), ["level_weights"]),
    "regularizer_weights_length": (dict(regularizer_level_weights=[1.0]), ["regularizer_level_weights", "per level"]),
    "bad_infonce_negatives": (dict(infonce_negatives="hard"), ["infonce_negatives", "'hard'"]),
}


def test_micro_spelled_out_is_valid():
    config = ZonkeyConfig(**MICRO)
    assert config.latent_size(0) == config.hidden_size[1] == 64


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_invalid_config_raises_naming_the_field(case):
    overrides, fragments = BAD_CONFIGS[case]
    with pytest.raises(ValueError) as info:
        ZonkeyConfig(**{**MICRO, **overrides})
    message = str(info.value)
    assert message.startswith("ZonkeyConfig:"), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_invalid_config_file_raises_on_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "zonkey", **MICRO, "hidden_size": [16, 48]}))
    with pytest.raises(ValueError, match=r"hidden_size\[1\]"):
        ZonkeyConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def model(micro_config):
    from modeling_zonkey import ZonkeyModel

    torch.manual_seed(0)
    return ZonkeyModel(micro_config).eval()


def raises(model, match: str, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        model(*args, **kwargs)
    return str(info.value)


def test_empty_string(model, tokenizer):
    assert tokenizer("")["input_ids"] == []
    batch = tokenizer([""], return_tensors="pt")
    assert batch["input_ids"].shape == (1, 0) and batch["input_ids"].dtype == torch.long
    message = raises(model, "empty", **batch)
    assert "at least one byte" in message


def test_empty_row_in_batch(model, tokenizer):
    batch = tokenizer(["abc", "", "de"], padding=True, return_tensors="pt")
    message = raises(model, "empty", **batch)
    assert "rows [1]" in message
    # the same without an attention mask (the mask comes from the pad id)
    raises(model, "empty", batch["input_ids"])
    # training with the loss validates too
    model.train()
    try:
        raises(model, "empty", **batch, return_loss=True)
    finally:
        model.eval()


def test_too_long_text(model, tokenizer, micro_config):
    limit = micro_config.document_length[0]
    ok = tokenizer(["x" * limit], return_tensors="pt")
    with torch.no_grad():
        assert model(**ok).levels[0].bos_probs.shape == (1, limit)  # exactly the limit is fine
    too_long = tokenizer(["x" * (limit + 1)], return_tensors="pt")
    message = raises(model, "document_length", **too_long)
    assert f"{limit + 1} bytes" in message and f"document_length[0] = {limit}" in message
    # the limit counts bytes, not characters: 65 two-byte characters are 130 bytes
    wide = tokenizer(["é" * 65], return_tensors="pt")
    assert wide["input_ids"].shape[1] == 130
    raises(model, r"document_length\[0\]", **wide)


def test_no_rows_and_a_pad_id_marked_as_a_byte_raise(model):
    """#28 (found by tests/test_properties.py): a batch of 0 documents went through forward (and failed deep in the
    compressor with return_loss); the pad id 256 where attention_mask is 1 failed in the loss's cross-entropy."""
    raises(model, "input_ids has no rows", input_ids=torch.zeros(0, 4, dtype=torch.long))
    raises(model, "input_ids holds the pad id 256 where attention_mask is 1", input_ids=torch.tensor([[65, 256]]),
           attention_mask=torch.tensor([[1, 1]]), return_loss=True)


def test_left_padding_raises(model):
    with pytest.raises(ValueError, match="pads on the right only"):  # the tokenizer refuses to left-pad
        ZonkeyTokenizer(padding_side="left")
    right = ZonkeyTokenizer()(["a longer text", "short"], padding=True, return_tensors="pt")
    shift = (right["attention_mask"] == 0).sum(1, keepdim=True)  # the same batch, left-padded by hand
    index = (torch.arange(right["input_ids"].shape[1]) - shift) % right["input_ids"].shape[1]
    batch = {key: value.gather(1, index) for key, value in right.items()}
    assert batch["attention_mask"][1, 0] == 0 and batch["input_ids"][1, -1] == ord("t")  # really left-padded
    message = raises(model, "right-padded", **batch)
    assert "attention_mask" in message
    raises(model, "right-padded", batch["input_ids"])  # mask inferred from the pad id
    # a hole in the mask is not right padding either
    ids = torch.tensor([[104, 105, 106]])
    raises(model, "right-padded", ids, attention_mask=torch.tensor([[1, 0, 1]]))


@pytest.mark.parametrize("bad_id", [257, 1000, -1])
def test_ids_out_of_range(model, bad_id):
    ids = torch.tensor([[104, 105, bad_id, 33]])
    message = raises(model, "input_ids", ids)
    assert "[0, 257)" in message and "ZonkeyTokenizer" in message


def test_wrong_rank(model):
    message = raises(model, "input_ids", torch.tensor([104, 105]))
    assert "(batch, length)" in message and "(2,)" in message


@pytest.mark.parametrize("length", [1, 2, 3])
def test_documents_shorter_than_the_latent_train(make_model, length):
    """#16: a batch narrower than num_cls_vectors[0] (1-2-byte paragraphs) crashed in the short-segment loss."""
    model = make_model().train()
    torch.manual_seed(0)
    out = model(torch.randint(97, 120, (3, length)), return_loss=True)
    assert all(torch.isfinite(v) for v in out.loss_terms.values())
    out.loss.backward()


# --------------------------------------------------------------- dtypes and masks (#16 item 9), forward and generate
def forward_and_generate(model, **batch):
    """Run forward and generate (2 steps) on the same batch: both validate through ZonkeyModel.check_ids."""
    with torch.no_grad():
        return model(**batch), model.generate(**batch, seed=0, num_steps=2)


def test_uint8_byte_ids_are_accepted(model, tokenizer):
    batch = tokenizer(["héllo", "bye"], padding=True, return_tensors="pt")
    ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 0)  # uint8 cannot hold the pad id 256
    long_out, long_gen = forward_and_generate(model, input_ids=ids, attention_mask=batch["attention_mask"])
    byte_out, byte_gen = forward_and_generate(model, input_ids=ids.to(torch.uint8),
                                              attention_mask=batch["attention_mask"])
    assert torch.equal(byte_out.levels[0].bos_probs, long_out.levels[0].bos_probs)
    assert torch.equal(byte_gen, long_gen) and byte_gen.dtype == torch.long


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool])
def test_non_integer_ids_are_refused_naming_the_dtype(model, dtype):
    ids = torch.tensor([[104, 105, 33]]).to(dtype)
    for call in (model, lambda **kw: model.generate(**kw, num_steps=2)):
        with pytest.raises(TypeError) as info:
            call(input_ids=ids)
        message = str(info.value)
        assert f"got dtype {dtype}" in message and "integer byte ids 0..256" in message, message
        assert "\n" not in message


def test_list_ids_and_list_mask_are_refused(model):
    with pytest.raises(TypeError, match="input_ids must be a tensor .* got list"):
        model([[104, 105]])
    with pytest.raises(TypeError, match="attention_mask must be a tensor .* got list"):
        model(torch.tensor([[104, 105]]), attention_mask=[[1, 1]])


def test_mask_of_another_shape_names_both_shapes(model):
    ids = torch.tensor([[104, 105, 106]])
    for mask in (torch.ones(1, 4, dtype=torch.long), torch.ones(3, dtype=torch.long),
                 torch.ones(2, 3, dtype=torch.long)):
        expected = f"attention_mask has shape {tuple(mask.shape)} but input_ids has shape (1, 3)"
        raises(model, re.escape(expected), ids, attention_mask=mask)
        raises(model, re.escape(expected), ids, attention_mask=mask, labels=ids)  # the labels check comes first
        with pytest.raises(ValueError, match=re.escape(expected)):
            model.generate(ids, attention_mask=mask, num_steps=2)
    with pytest.raises(ValueError, match=re.escape("suffix_attention_mask has shape (1, 2) "
                                                   "but suffix_ids has shape (1, 3)")):
        model.generate(ids, suffix_ids=ids, suffix_attention_mask=torch.ones(1, 2), num_steps=2)


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan")])
def test_fractional_mask_is_refused(model, bad):
    ids = torch.tensor([[104, 105, 106]])
    mask = torch.tensor([[1.0, bad, 0.0]])
    message = raises(model, "attention_mask must hold only 0 and 1", ids, attention_mask=mask)
    assert f"got {bad}" in message and "1: a byte, 0: padding" in message, message
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model.generate(ids, attention_mask=mask, num_steps=2)


def test_float_and_bool_masks_of_0_and_1_equal_the_long_mask(model):
    ids = torch.tensor([[104, 105, 106], [107, 108, 256]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    reference, reference_gen = forward_and_generate(model, input_ids=ids, attention_mask=mask)
    for other in (mask.float(), mask.bool()):
        out, gen = forward_and_generate(model, input_ids=ids, attention_mask=other)
        assert torch.equal(out.levels[0].bos_probs, reference.levels[0].bos_probs) and torch.equal(gen, reference_gen)


def test_denoiser_curve_seed_out_of_range(model):
    from modeling_zonkey.evaluation.diagnostics import denoiser_curve

    ids = torch.tensor([[104, 105, 106]])
    with pytest.raises(ValueError, match=re.escape("seed must be an integer in [0, 2**63 - 1], "
                                                   "got 18446744073709551616.")):
        denoiser_curve(model, ids, torch.ones_like(ids), (0.5,), seed=2**64)
