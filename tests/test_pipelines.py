"""transformers pipelines (issue #15): the stock "feature-extraction" pipeline returns the level-0 segment latents
(with the package and with remote code alone), and "zonkey-text-generation" answers like "text-generation" with
exactly what model.generate writes."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from transformers import pipeline
from transformers.pipelines import get_supported_tasks

from modeling_zonkey import ZonkeyModel, ZonkeyTextGenerationPipeline
from modeling_zonkey.pipeline_zonkey import TEXT_GENERATION_TASK, register_pipelines

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["The river flows north.", "In 1889 the railway station opened to the public."]
# without clamping: the untrained micro model's clamped chain falls onto one fixed point whatever the seed
FAST = {"num_steps": 3, "clamp": False}


@pytest.fixture(scope="module")
def model(micro_folder):
    return ZonkeyModel.from_pretrained(micro_folder).eval()


@pytest.fixture(scope="module")
def generator(micro_folder):
    return pipeline(TEXT_GENERATION_TASK, model=str(micro_folder))


def latents(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**tokenizer([text], return_tensors="pt"))
    assert out.segment_latents is out.levels[0].latents
    return out.segment_latents


def generated(model, tokenizer, prompt: str | None, **kwargs) -> list[str]:
    inputs = {} if prompt is None else tokenizer([prompt], return_tensors="pt")
    if "suffix" in kwargs:
        kwargs["suffix_ids"] = tokenizer([kwargs.pop("suffix")], return_tensors="pt")["input_ids"]
    return tokenizer.batch_decode(model.generate(**inputs, **kwargs), skip_special_tokens=True)


# ------------------------------------------------------------------------------------- feature extraction
def test_the_output_puts_the_segment_latents_first_and_keeps_the_loss_first(make_model, tokenizer):
    model = make_model()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = model(**batch)
    assert out[0] is out.segment_latents is out.levels[0].latents and model(**batch, return_dict=False)[0].dim() == 3
    assert out.segment_latents.shape == (2, int(out.levels[0].latent_mask.sum(1).max()), 4 * 16)  # C_0 d_0
    torch.manual_seed(0)
    with_loss = model(**batch, return_loss=True)
    assert (with_loss[0] is with_loss.loss
            and list(with_loss.keys()) == ["loss", "loss_terms", "segment_latents", "levels"])


def test_feature_extraction_returns_the_segment_latents(micro_folder, model, tokenizer):
    extractor = pipeline("feature-extraction", model=str(micro_folder))  # the installed package: no remote code
    assert type(extractor.model) is ZonkeyModel
    for text in TEXTS:
        expected = latents(model, tokenizer, text)
        features = np.array(extractor(text))
        assert features.shape == tuple(expected.shape) and features.shape[:2] == (1, expected.shape[1])
        np.testing.assert_allclose(features, expected.numpy(), rtol=0, atol=1e-6)
        torch.testing.assert_close(extractor(text, return_tensors=True), expected, rtol=0, atol=1e-6)
    listed = extractor(TEXTS)
    assert [np.array(f).shape for f in listed] == [tuple(latents(model, tokenizer, t).shape) for t in TEXTS]


def test_feature_extraction_in_batches_equals_single_texts(micro_folder, model, tokenizer):
    """batch_size > 1: each text's features are its own, followed by zero vectors up to the batch's longest text
    (the padding, as transformers' pipeline gives it for any encoder)."""
    extractor = pipeline("feature-extraction", model=str(micro_folder))
    texts = [TEXTS[1], "A", TEXTS[0], "Hello there, my friend."]
    batched = extractor(texts, batch_size=3, return_tensors=True)
    for text, features in zip(texts, batched):
        single = latents(model, tokenizer, text)
        assert features.shape[0] == 1 and features.shape[1] >= single.shape[1]
        torch.testing.assert_close(features[:, : single.shape[1]], single, rtol=0, atol=1e-5)
        assert not features[:, single.shape[1] :].any()
    assert max(f.shape[1] for f in batched) > min(f.shape[1] for f in batched)  # the padding was exercised


PIPELINES_WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_zonkey"] = None  # the installed package must not be used
    from transformers import pipeline
    folder, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    extractor = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    generator = pipeline("zonkey-text-generation", model=folder, trust_remote_code=True)
    json.dump({"modules": [type(extractor.model).__module__, type(generator).__module__],
               "features": extractor(texts[0]), "batched": extractor(texts, batch_size=2),
               "generated": generator(texts, seed=0, num_steps=3, clamp=False, batch_size=2)}, open(out, "w"))
    """
)


def test_pipelines_with_remote_code_alone(micro_folder, model, tokenizer, generator, tmp_path):
    """pipeline("feature-extraction" | "zonkey-text-generation", model=folder, trust_remote_code=True) without the
    package: the folder's config.json declares its text-generation pipeline (custom_pipelines) and carries its code."""
    declared = json.loads((micro_folder / "config.json").read_text())["custom_pipelines"]
    assert declared == {TEXT_GENERATION_TASK: {"impl": "pipeline_zonkey.ZonkeyTextGenerationPipeline",
                                               "pt": ["AutoModel"], "type": "text"}}
    assert (micro_folder / "pipeline_zonkey.py").is_file()
    assert model.config.custom_pipelines == {}  # the installed package serves the task: no trust_remote_code needed
    script, out = tmp_path / "pipelines.py", tmp_path / "pipelines.json"
    script.write_text(PIPELINES_WITHOUT_THE_PACKAGE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               PYTHONNOUSERSITE="1")
    done = subprocess.run([sys.executable, str(script), str(micro_folder), json.dumps(TEXTS), str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert all(module.startswith("transformers_modules.") for module in result["modules"]), result["modules"]
    np.testing.assert_allclose(np.array(result["features"]), latents(model, tokenizer, TEXTS[0]).numpy(),
                               rtol=0, atol=1e-6)
    for text, features in zip(TEXTS, result["batched"]):
        single = latents(model, tokenizer, text).numpy()
        np.testing.assert_allclose(np.array(features)[:, : single.shape[1]], single, rtol=0, atol=1e-5)
    assert result["generated"] == [generator(text, seed=0, num_steps=3, clamp=False) for text in TEXTS]


def test_feature_extraction_refuses_what_the_model_refuses(micro_folder, model):
    extractor = pipeline("feature-extraction", model=model, tokenizer=str(micro_folder))
    with pytest.raises(ValueError, match="empty document"):
        extractor("")
    with pytest.raises(ValueError, match="exceeds document_length"):
        extractor("x" * (model.config.document_length[0] + 1))
    limit = {"max_length": model.config.document_length[0]}  # (the saved tokenizer's model_max_length is 2048)
    assert np.array(extractor("x" * 500, truncation=True, tokenize_kwargs=limit)).shape[0] == 1


# ------------------------------------------------------------------------------------- text generation
def test_the_task_is_registered_on_import_and_once():
    assert TEXT_GENERATION_TASK in get_supported_tasks()
    logger = transformers.pipelines.base.logger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        register_pipelines()
    finally:
        logger.removeHandler(handler)
    assert not records  # no "already registered. Overwriting" on a second registration


def test_generated_text_is_what_generate_writes(generator, model, tokenizer):
    assert isinstance(generator, ZonkeyTextGenerationPipeline) and type(generator.model) is ZonkeyModel
    prompt = TEXTS[0]
    result = generator(prompt, seed=0, **FAST)
    expected = generated(model, tokenizer, prompt, seed=0, **FAST)
    assert (result == [{"generated_text": expected[0]}] and expected[0].startswith(prompt)
            and len(expected[0]) > len(prompt))
    assert generator(prompt, seed=1, **FAST) != result  # the seed is passed on
    new = generator(prompt, seed=0, return_full_text=False, **FAST)
    assert new == [{"generated_text": expected[0][len(prompt):]}]
    ids = generator(prompt, seed=0, return_tensors=True, **FAST)[0]["generated_token_ids"]
    row = model.generate(**tokenizer([prompt], return_tensors="pt"), seed=0, **FAST)[0]
    assert ids == row[row != 256].tolist() and ids[: len(prompt)] == list(prompt.encode())
    several = generator(prompt, seed=0, num_return_sequences=2, **FAST)
    assert [r["generated_text"] for r in several] == generated(model, tokenizer, prompt, seed=0,
                                                               num_return_sequences=2, **FAST)


def test_other_modes_are_what_generate_writes(generator, model, tokenizer):
    filled = generator("The river", suffix=" to the sea.", seed=0, gap_segments=2, **FAST)
    assert filled == [{"generated_text": generated(model, tokenizer, "The river", suffix=" to the sea.", seed=0,
                                                   gap_segments=2, **FAST)[0]}]
    assert filled[0]["generated_text"].startswith("The river") and filled[0]["generated_text"].endswith(" to the sea.")
    varied = generator(TEXTS[1], noise_level=0.5, seed=0, **FAST)
    assert varied == [{"generated_text": generated(model, tokenizer, TEXTS[1], noise_level=0.5, seed=0, **FAST)[0]}]
    assert generator(TEXTS[1], noise_level=0.5, seed=0, return_full_text=False, **FAST) == varied  # no prompt kept
    assert generator("", seed=0, **FAST) == [{"generated_text": generated(model, tokenizer, None, seed=0, **FAST)[0]}]
    capped = generator(TEXTS[0], seed=0, max_new_tokens=2, **FAST)
    assert capped == [{"generated_text": generated(model, tokenizer, TEXTS[0], seed=0, max_new_tokens=2, **FAST)[0]}]
    assert len(generator(TEXTS[0], seed=0, max_new_tokens=2, return_tensors=True,
                         **FAST)[0]["generated_token_ids"]) == len(TEXTS[0].encode()) + 2


def test_a_list_of_prompts_equals_single_calls(micro_folder, generator):
    prompts = [TEXTS[0], "In 1889", ""]  # different lengths (padded in a batch), and an unconditional sample
    singles = [generator(p, seed=0, **FAST) for p in prompts]
    assert generator(prompts, seed=0, **FAST) == singles
    assert generator(prompts, seed=0, batch_size=2, **FAST) == singles
    assert generator(prompts, seed=0, batch_size=3, **FAST) == singles
    # options given to pipeline(...) apply to every call
    preset = pipeline(TEXT_GENERATION_TASK, model=str(micro_folder), seed=0, **FAST)
    assert preset(prompts, batch_size=2) == singles


def test_bad_input_gives_a_clear_error(micro_folder, generator):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['do_sample', 'temperature'\].*num_steps"):
        generator("The", do_sample=True, temperature=0.7)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['top_k'\]"):
        pipeline(TEXT_GENERATION_TASK, model=str(micro_folder), top_k=5)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        generator("The", num_steps=0)
    with pytest.raises(ValueError, match="sets \\['return_dict_in_generate'\\] itself"):
        generator("The", return_dict_in_generate=True)
    with pytest.raises(ValueError, match="exclude each other"):
        generator("The", return_full_text=False, return_tensors=True)
    with pytest.raises(TypeError, match="prompt string or a list of strings, got int"):
        generator(5)
    with pytest.raises(TypeError, match="without a chat template"):
        generator([{"role": "user", "content": "Hello"}])
    with pytest.raises(ValueError, match="needs a non-empty prompt"):
        generator("", suffix="after")
    with pytest.raises(ValueError, match="max_length"):
        generator(TEXTS[0], max_length=3, **FAST)  # from generate: the prompt leaves no room
