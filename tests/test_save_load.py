"""The Hugging Face save / load surface of ZonkeyModel, on the micro preset (seeded, CPU), ported in spirit from
transformers' ModelTesterMixin (which the wheel does not ship): save_pretrained / from_pretrained with identical
weights and outputs, the saved folder's layout and self-contained remote code, the Auto* classes, loading through
trust_remote_code without the package, the bf16 round trip, and checkpoints with the stitcher's old 0-dim
parameters."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = [
    "Zonkeys are hybrids of zebras and donkeys; the stripes usually show on the legs, rarely on the body.",
    "Hi, zonkey!",
]


def encode(model: ZonkeyModel, batch) -> dict[str, torch.Tensor]:
    """Eval-mode encoding of a batch: bos_probs, boundaries, latents (+ masks, parents) of every level."""
    with torch.no_grad():
        output = model(**batch)
    result = {}
    for index, level in enumerate(output.levels):
        for name in ("bos_probs", "boundaries", "valid", "latents", "latent_mask", "parent"):
            result[f"level{index}/{name}"] = getattr(level, name).detach().clone()
    return result


def assert_same_outputs(actual: dict, expected: dict, atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(actual[key], value, atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(actual[key], value), key


def config_dict(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def saved(tmp_path_factory, make_model, tokenizer):
    """A perturbed micro model and tokenizer saved to one folder, with the reference eval outputs."""
    model = make_model(seed=0)
    model.generation_config.num_steps = 4  # a non-default option that must survive the round trip
    folder = tmp_path_factory.mktemp("zonkey_saved")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return model, folder, batch, encode(model, batch)


# --------------------------------------------------------------------------------------- save / load
def test_save_load_gives_identical_weights_and_outputs(saved):
    model, folder, batch, reference = saved
    loaded = ZonkeyModel.from_pretrained(folder)
    assert not loaded.training, "from_pretrained must return the model in eval mode"
    assert loaded.dtype == torch.float32
    assert config_dict(loaded.config) == config_dict(model.config)
    assert_same_state_dict(loaded.state_dict(), model.state_dict())
    outputs = encode(loaded, batch)
    assert_same_outputs(outputs, reference)
    # both levels produced something to compare
    assert reference["level0/latent_mask"].sum() > len(TEXTS) and reference["level1/latent_mask"].sum() >= len(TEXTS)


def test_saved_folder_layout(saved):
    model, folder, _, _ = saved
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert sorted(load_file(folder / "model.safetensors")) == sorted(model.state_dict())

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "zonkey"
    assert config["architectures"] == ["ZonkeyModel"]
    assert config["auto_map"] == {"AutoConfig": "configuration_zonkey.ZonkeyConfig",
                                  "AutoModel": "modeling_zonkey.ZonkeyModel"}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    auto_tokenizer = tokenizer_config["auto_map"]["AutoTokenizer"]
    auto_tokenizer = auto_tokenizer[0] if isinstance(auto_tokenizer, list) else auto_tokenizer
    assert auto_tokenizer == "tokenization_zonkey.ZonkeyTokenizer"
    assert tokenizer_config["model_max_length"] < 10**9

    # auto_map references are flat "module.Class" names whose module file sits next to the weights
    for reference in [*config["auto_map"].values(), auto_tokenizer]:
        module, _, cls = reference.partition(".")
        assert module and cls and "." not in cls and "--" not in module, reference
        assert f"{module}.py" in files, reference

    # the remote code is self-contained: relative imports only among flat files of the folder, no import
    # of the installed package, absolute imports only of the standard library, torch, numpy, transformers
    python_files = sorted(name for name in files if name.endswith(".py"))
    assert {"configuration_zonkey.py", "modeling_zonkey.py", "tokenization_zonkey.py"} <= set(python_files)
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "transformers"}
    for name in python_files:
        tree = ast.parse((folder / name).read_text(), filename=name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{name}: {'.' * node.level}{node.module}"
                assert f"{node.module}.py" in files, f"{name} imports .{node.module}, not shipped"
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in allowed, f"{name}: from {node.module} import ..."
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{name}: import {alias.name}"


def test_auto_classes_load_saved_folder(saved):
    model, folder, batch, reference = saved
    config = AutoConfig.from_pretrained(folder)
    assert type(config) is ZonkeyConfig
    assert config.hidden_size == model.config.hidden_size
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is ZonkeyModel
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer) is ZonkeyTokenizer
    assert len(tokenizer) == config.vocab_size == 257
    assert tokenizer.pad_token_id == config.pad_token_id
    auto_batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(auto_batch["input_ids"], batch["input_ids"])
    assert_same_outputs(encode(loaded, auto_batch), reference)
    # AutoModel.from_config builds the same architecture
    assert type(AutoModel.from_config(config)) is ZonkeyModel


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_zonkey"] = None  # the installed package must not be used
    try:
        import modeling_zonkey
    except ImportError:
        pass
    else:
        raise SystemExit("the zonkey package is importable: the remote-code test would prove nothing")

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder, out_path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        AutoModel.from_pretrained(folder)
    except ValueError as error:
        assert "trust_remote_code" in str(error), error
    else:
        raise SystemExit("loading custom code without trust_remote_code=True did not raise")

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    result = {"classes": [type(x).__module__ + "." + type(x).__name__ for x in (config, model, tokenizer)],
              "vocab": len(tokenizer), "input_ids": batch["input_ids"]}
    for index, level in enumerate(output.levels):
        for name in ("bos_probs", "boundaries", "valid", "latents", "latent_mask", "parent"):
            result[f"level{index}/{name}"] = getattr(level, name)
    # generation ships with the remote code too (generation config class and the saved options)
    result["generation_config"] = type(model.generation_config).__name__, model.generation_config.num_steps
    result["generated"] = model.generate(num_return_sequences=2, seed=0)
    torch.save(result, out_path)
    """
)


def test_remote_code_loads_without_the_package(saved, tmp_path):
    model, folder, batch, reference = saved
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    out_path = tmp_path / "remote_outputs.pt"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    completed = subprocess.run([sys.executable, str(script), str(folder), str(out_path), json.dumps(TEXTS)],
                               cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = torch.load(out_path, weights_only=False)
    for qualified in result.pop("classes"):
        assert qualified.startswith("transformers_modules."), f"{qualified} did not come from the remote code"
    assert result.pop("vocab") == 257
    assert torch.equal(result.pop("input_ids"), batch["input_ids"])
    assert result.pop("generation_config") == ("ZonkeyGenerationConfig", model.generation_config.num_steps)
    assert torch.equal(result.pop("generated"), model.generate(num_return_sequences=2, seed=0))
    assert_same_outputs(result, reference, atol=1e-6)


def test_bf16_round_trip(make_model, tokenizer, tmp_path):
    model = make_model(seed=5).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = ZonkeyModel.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert_same_state_dict(loaded.state_dict(), model.state_dict())

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    outputs = encode(loaded, batch)
    assert outputs["level0/latents"].dtype == torch.bfloat16
    for key, value in outputs.items():
        if value.dtype.is_floating_point:
            assert torch.isfinite(value).all(), key
    assert outputs["level1/latent_mask"].sum() >= len(TEXTS)
    assert_same_outputs(outputs, encode(model, batch))
    # fp32 load of the bf16 checkpoint upcasts exactly
    upcast = ZonkeyModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert upcast.dtype == torch.float32
    assert torch.equal(upcast.byte_embeddings.weight, model.byte_embeddings.weight.float())


def test_no_scalar_parameters_and_old_scalar_checkpoints_load(make_model, tmp_path):
    """FSDP2's fully_shard rejects 0-dim parameters: the stitcher's alpha and rho are (1,). Checkpoints written
    when they were 0-dim load through the weight conversion registered in stitcher.py."""
    from safetensors.torch import load_file, save_file

    model = make_model()
    assert all(p.dim() >= 1 for p in model.parameters())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["levels.0.stitcher.alpha"].shape == (1,)
    old = {k: (v.reshape(()) if k.endswith(("stitcher.alpha", "stitcher.rho")) else v) for k, v in weights.items()}
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = ZonkeyModel.from_pretrained(tmp_path)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, loaded.get_parameter(name)), name
