"""The parameters of ZonkeyModel, on the micro preset (seeded, CPU): every weight initialised (on the meta device
too) when from_pretrained gets an empty state dict, no tensor attribute that is neither a parameter nor a buffer,
compile_components keeping the checkpoint names, the fixed vocabulary and attention implementation refusing what
they cannot do, and the AdamW groups covering every parameter once."""

import pytest
import torch
from test_save_load import TEXTS, assert_same_state_dict, encode

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_can_init_all_missing_weights(micro_config):
    torch.manual_seed(123)
    first = ZonkeyModel.from_pretrained(None, config=micro_config, state_dict={})
    torch.manual_seed(123)
    second = ZonkeyModel.from_pretrained(None, config=micro_config, state_dict={})
    torch.manual_seed(124)
    third = ZonkeyModel.from_pretrained(None, config=micro_config, state_dict={})

    for model in (first, second):
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            assert tensor.device.type == "cpu", f"{name} left on {tensor.device}"
            assert torch.isfinite(tensor).all(), f"{name} is not finite after init"
    assert_same_state_dict(second.state_dict(), first.state_dict())
    buffers_first, buffers_second = dict(first.named_buffers()), dict(second.named_buffers())
    assert buffers_first.keys() == buffers_second.keys()
    for name, tensor in buffers_first.items():
        assert torch.equal(tensor, buffers_second[name]), name
    # the seed matters: random weights really are drawn (not left at a constant or at garbage)
    assert not torch.equal(third.byte_embeddings.weight, first.byte_embeddings.weight)

    # every custom parameter went through _init_weights (on the meta device nothing else initialises them)
    level = first.levels[0]
    assert torch.allclose(level.stitcher.alpha, torch.tensor(1.0))
    assert torch.allclose(level.stitcher.rho, torch.tensor(0.1))
    for tensor in (level.compressor.cls_vectors, first.levels[1].masked_vector.mask_vector,
                   first.byte_embeddings.weight):
        assert 0.5 < tensor.std().item() < 1.5
    assert torch.equal(level.splitter.head_norm.weight, torch.ones_like(level.splitter.head_norm.weight))
    assert torch.equal(level.splitter.head.bias, torch.zeros_like(level.splitter.head.bias))
    fan_in = level.compressor.conv.weight[0].numel()
    std = level.compressor.conv.weight.std().item()
    assert 0.7 * fan_in**-0.5 < std < 1.3 * fan_in**-0.5

    # the initialised model runs and its encoding is finite
    tokenizer = ZonkeyTokenizer()
    outputs = encode(first.eval(), tokenizer(TEXTS, padding=True, return_tensors="pt"))
    for key, value in outputs.items():
        if value.dtype.is_floating_point:
            assert torch.isfinite(value).all(), key


def test_all_tensors_are_parameters_or_buffers(make_model):
    model = make_model(seed=0, perturb=False)
    stray = []
    for module_name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if attribute in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, dict):
                values = list(value.values())
            else:
                values = list(value) if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(item, torch.Tensor) for item in values):
                stray.append(f"{module_name or '<model>'}.{attribute}")
    assert stray == [], f"tensor attributes that are neither parameters nor buffers: {stray}"
    for name, buffer in model.named_buffers():
        assert torch.isfinite(buffer).all(), name


def test_compile_components_keeps_the_checkpoint_names(micro_config):
    """--torch_compile compiles in place (lazily, at the first forward): state-dict keys stay as saved."""
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config)
    keys = list(model.state_dict())
    model.compile_components(["decoder", "compressor"])
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="level 0 has no component 'masked_vector'"):
        model.compile_components(["masked_vector"])


def test_fixed_vocabulary_and_attention_refuse_what_they_cannot_do(micro_config, make_model):
    model = make_model()
    assert model.resize_token_embeddings(257) is model.get_input_embeddings()
    with pytest.raises(ValueError, match="vocabulary is fixed at 257 ids"):
        model.resize_token_embeddings(300)
    with pytest.raises(ValueError, match="attn_implementation='eager' is not available"):
        ZonkeyModel(ZonkeyConfig(**{**micro_config.to_dict(), "attn_implementation": "eager"}))


def test_optimizer_groups_cover_every_parameter_once(make_model):
    """AdamW groups: weight decay on the projection weights only; biases, norms, embeddings, CLS / mask vectors, the
    time embedding and the stitcher's alpha / rho get none; no parameter is left out or given twice."""
    model = make_model()
    decay, no_decay = model.optimizer_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(map(id, decay["params"] + no_decay["params"])) == sorted(names)
    exempt = [names[id(p)] for p in no_decay["params"]]
    assert any("byte_embeddings" in n for n in exempt) and any(n.endswith("alpha") for n in exempt)
    assert all(not n.endswith("bias") and "norm" not in n for n in (names[id(p)] for p in decay["params"]))
    assert all(p.dim() >= 2 for p in decay["params"])  # only matrices are decayed
