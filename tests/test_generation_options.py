"""generate()'s options: the generation config saved with a model (round trip, defaults, an unreadable file), the
noise schedules, and the clear errors for invalid options and prompts."""

import json
import re

import pytest
import torch
from test_generation import FAST

from modeling_zonkey import ZonkeyGenerationConfig, ZonkeyModel
from modeling_zonkey.sampling import noise_schedule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)


# -------------------------------------------------------------------------------- generation config
def test_generation_config_round_trips_through_save_and_load(model, tmp_path):
    from transformers import AutoModel

    model.generation_config = ZonkeyGenerationConfig(num_steps=7, sampler="deterministic", noise_schedule="cosine",
                                                     existence_threshold=0.4, max_new_tokens=30, seed=9)
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.generation_config = ZonkeyGenerationConfig.from_model_config(model.config)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["num_steps"] == 7 and saved["sampler"] == "deterministic" and saved["seed"] == 9
    for loaded in (ZonkeyModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        config = loaded.generation_config
        assert type(config) is ZonkeyGenerationConfig
        assert (config.num_steps, config.sampler, config.noise_schedule, config.existence_threshold,
                config.max_new_tokens, config.seed) == (7, "deterministic", "cosine", 0.4, 30, 9)
        # the loaded options are the defaults of generate()
        assert torch.equal(loaded.generate(), model.generate(num_steps=7, sampler="deterministic",
                                                             noise_schedule="cosine", existence_threshold=0.4,
                                                             max_new_tokens=30, seed=9))


def test_model_without_generation_config_file_gets_defaults(model, tmp_path):
    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    loaded = ZonkeyModel.from_pretrained(tmp_path)
    assert type(loaded.generation_config) is ZonkeyGenerationConfig
    assert loaded.generation_config.num_steps is None  # unset: generate() applies the declared default
    resolved = loaded._prepare_generation_config(None)
    assert resolved.num_steps == ZonkeyGenerationConfig._get_default_generation_params()["num_steps"] == 50
    assert resolved.existence_threshold == model.config.existence_threshold


def test_an_unreadable_generation_config_file_is_named_not_dropped(model, tmp_path):
    """A generation_config.json that is there but broken (a hand edit gone wrong) must not be replaced by the defaults
    without a word: from_pretrained names the file."""
    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"num_steps": 7,')
    with pytest.raises(ValueError, match="generation_config.json could not be read"):
        ZonkeyModel.from_pretrained(tmp_path)


def test_noise_schedules_run_from_start_to_zero():
    linear, cosine = noise_schedule("linear", 4), noise_schedule("cosine", 4, 0.5)
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert cosine[0] == pytest.approx(0.5) and cosine[-1] == 0.0
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    assert cosine[2] > 0.25  # cosine spends more steps at high noise than linear
    quadratic = noise_schedule("quadratic", 4, 0.8)
    assert quadratic == pytest.approx([0.8, 0.45, 0.2, 0.05, 0.0])  # more steps at low noise


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("options, message", [
    ({"num_steps": 0}, "num_steps must be a positive integer"),
    ({"num_steps": 2.5}, "num_steps must be a positive integer"),
    ({"max_length": -3}, "max_length must be a positive integer"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"num_return_sequences": 0}, "num_return_sequences must be a positive integer"),
    ({"sampler": "euler"}, "sampler must be one of"),
    ({"noise_schedule": "sigmoid"}, "noise_schedule must be one of"),
    ({"existence_threshold": 1.5}, "existence_threshold must lie in (0, 1)"),
    ({"seed": -1}, "seed must be an integer in [0, 2**63 - 1], got -1"),
    ({"seed": 2**64}, "seed must be an integer in [0, 2**63 - 1], got 18446744073709551616"),  # torch: OverflowError
    ({"seed": 2**63}, "seed must be an integer in [0, 2**63 - 1]"),
    ({"seed": 1.5}, "seed must be an integer in [0, 2**63 - 1]"),
    ({"clamp": "yes"}, "clamp must be True or False"),
    ({"temperature": 0.7}, "unknown argument(s) ['temperature']"),
])
def test_invalid_generation_options_get_clear_errors(model, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate(**options)


def test_largest_seed_generates_every_sample(model):
    """#16 item 9: seeds up to 2**63 - 1 work (seed + i of every sample stays within torch's 64-bit seeds); the
    config refuses larger ones itself instead of torch overflowing later."""
    assert model.generate(seed=2**63 - 1, num_return_sequences=3, **FAST).shape[0] == 3
    with pytest.raises(ValueError, match=re.escape("seed must be an integer in [0, 2**63 - 1], "
                                                   "got 18446744073709551616.")):
        ZonkeyGenerationConfig(seed=2**64)


def test_invalid_prompts_get_clear_errors(model, tokenizer):
    batch = tokenizer(["the cat sat on the mat."], return_tensors="pt")
    with pytest.raises(ValueError, match="not fewer than max_length = 10"):
        model.generate(**batch, max_length=10)
    with pytest.raises(ValueError, match="noise_level must lie in"):
        model.generate(**batch, noise_level=1.5)
    with pytest.raises(ValueError, match="noise_level reconstructs given texts"):
        model.generate(noise_level=0.5)
    with pytest.raises(ValueError, match="suffix_ids .* needs input_ids"):
        model.generate(suffix_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="gap_segments = 7 leaves no room"):
        model.generate(**batch, suffix_ids=batch["input_ids"], gap_segments=7)
    with pytest.raises(ValueError, match="empty input_ids in rows"):
        model.generate(input_ids=torch.full((1, 4), 256))
    with pytest.raises(ValueError, match="one suffix per prefix"):
        model.generate(**batch, suffix_ids=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 257\)"):
        model.generate(input_ids=torch.tensor([[300, 1]]))
    with pytest.raises(ValueError, match="level must lie in"):
        model.generate(**batch, noise_level=0.5, level=2)
    long_text = tokenizer(["x" * 200], return_tensors="pt")
    with pytest.raises(ValueError, match="more than document_length"):
        model.generate(**long_text, noise_level=0.5)
    # a long prompt is fine for continuation: only its end conditions the window, all of it is returned
    out = model.generate(**long_text, seed=0, **FAST)
    assert torch.equal(out[0, :200], long_text["input_ids"][0])
