"""The forward of ZonkeyModel, on the micro preset (seeded, CPU): batching equivalence of the eval encoding, the
training loss as the weighted sum of its named terms, config switches that train, a training step that lowers the
loss, and gradient checkpointing (the same loss and gradients, fewer saved activations)."""

import os

import pytest
import torch
from test_save_load import TEXTS, encode

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.configuration_zonkey import REGULARIZER_TERMS
from modeling_zonkey.decoder import CausalBlock
from modeling_zonkey.probabilistic_attention import PABlock

pytestmark = pytest.mark.usefixtures("single_thread")

MICRO_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configuration",
                          "zonkey-micro.json")
SHORT_TEXTS = ["The quick brown fox jumps.", "Zonkeys are hybrids."]  # training-mode tests (cheaper)
ATOL = 1e-5


def test_batching_equivalence(make_model, tokenizer):
    model = make_model(seed=3)  # perturbed: LayerNorm biases etc. are non-zero, as after training
    batched = encode(model, tokenizer(TEXTS, padding=True, return_tensors="pt"))
    for row, text in enumerate(TEXTS):
        alone = encode(model, tokenizer([text], return_tensors="pt"))
        n = len(text.encode("utf-8"))
        assert batched["level0/valid"][row].sum() == n
        for name in ("bos_probs", "boundaries"):
            expected = alone[f"level0/{name}"][0]
            actual = batched[f"level0/{name}"][row, :n]
            assert torch.allclose(actual.float(), expected.float(), atol=ATOL, rtol=0), f"row {row} level0/{name}"
        mask = batched["level0/latent_mask"][row]
        assert torch.equal(mask.sum(), alone["level0/latent_mask"][0].sum())
        expected = alone["level0/latents"][0][alone["level0/latent_mask"][0]]
        torch.testing.assert_close(batched["level0/latents"][row][mask], expected, atol=ATOL, rtol=0,
                                   msg=f"row {row} level0/latents")
        # level 1: the rows (chunks) of this document
        rows = (batched["level1/parent"] == row).nonzero().flatten()
        assert len(rows) == len(alone["level1/parent"]) >= 1
        for name in ("bos_probs", "boundaries", "valid"):
            actual, expected = batched[f"level1/{name}"][rows], alone[f"level1/{name}"]
            assert torch.allclose(actual.float(), expected.float(), atol=ATOL, rtol=0), f"row {row} level1/{name}"
        mask1 = batched["level1/latent_mask"][rows]
        assert torch.equal(mask1.sum(1), alone["level1/latent_mask"].sum(1))
        expected = alone["level1/latents"][alone["level1/latent_mask"]]
        torch.testing.assert_close(batched["level1/latents"][rows][mask1], expected, atol=ATOL, rtol=0,
                                   msg=f"row {row} level1/latents")


def loss_and_grads(model: ZonkeyModel, batch, seed: int) -> tuple[torch.Tensor, dict, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    output = model(**batch, return_loss=True)
    output.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), {k: v.detach() for k, v in output.loss_terms.items()}, grads


def test_gradient_checkpointing_gives_same_loss_and_gradients(make_model, tokenizer):
    model = make_model(seed=4, perturb=False).train()
    batch = tokenizer(SHORT_TEXTS, padding=True, return_tensors="pt")
    loss, terms, grads = loss_and_grads(model, batch, seed=11)
    assert torch.isfinite(loss)
    assert len(grads) > 0.9 * len(list(model.parameters()))

    assert model.supports_gradient_checkpointing
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()  # transformers' default: torch checkpoint with use_reentrant=False (RNG state preserved)
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    calls = []
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            inner = module._gradient_checkpointing_func

            def counted(*args, _inner=inner, **kwargs):
                calls.append(1)
                return _inner(*args, **kwargs)

            module._gradient_checkpointing_func = counted
    blocks = [m for m in model.modules() if isinstance(m, (CausalBlock, PABlock))]
    assert blocks and all(block.gradient_checkpointing for block in blocks), "a block is left out"
    assert any(isinstance(m, CausalBlock) for m in blocks)  # the decompressor's blocks too
    checkpointed_loss, checkpointed_terms, checkpointed_grads = loss_and_grads(model, batch, seed=11)
    assert len(calls) > 0, "no block was checkpointed"

    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=1e-6)
    assert checkpointed_terms.keys() == terms.keys()
    for key in terms:
        torch.testing.assert_close(checkpointed_terms[key], terms[key], atol=1e-6, rtol=1e-6, msg=key)
    assert checkpointed_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)

    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    assert not any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def saved_activation_bytes(model, batch, seed: int) -> int:
    """Bytes of the tensors autograd saves for the backward pass during one training forward (what activation
    checkpointing exists to cut; a deterministic stand-in for peak memory on CPU)."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch, return_loss=True).loss.backward()
    return total[0]


def test_gradient_checkpointing_saves_fewer_activations(make_model, tokenizer):
    model = make_model(seed=4, perturb=False).train()
    batch = tokenizer(SHORT_TEXTS, padding=True, return_tensors="pt")
    plain = saved_activation_bytes(model, batch, seed=11)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    try:
        checkpointed = saved_activation_bytes(model, batch, seed=11)
    finally:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    # measured: 0.34 of the plain run with every block checkpointed, 0.72 with the decompressor's blocks left out
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


def test_training_step_reduces_loss(make_model, tokenizer):
    model = make_model(seed=6, perturb=False).train()
    batch = tokenizer(SHORT_TEXTS, padding=True, return_tensors="pt")

    def evaluation_loss() -> float:
        torch.manual_seed(1234)  # the loss samples boundaries and noise: same draws before and after
        with torch.no_grad():
            return model(**batch, return_loss=True).loss.item()

    before = evaluation_loss()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(3):
        torch.manual_seed(step)
        loss = model(**batch, return_loss=True).loss
        assert torch.isfinite(loss), f"step {step}"
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluation_loss()
    assert after < 0.75 * before, (before, after)
    changed = sum(not torch.equal(p, initial[name]) for name, p in model.named_parameters())
    assert changed > 0.9 * len(initial)


def test_loss_is_the_weighted_sum_of_the_named_terms(micro_config, tokenizer):
    """loss = sum_l sum_name w_l(name) * weight_name * term, where w_l is regularizer_level_weights[l] for the
    regularisers (patch, short-segment, compression, anti-collapse) and level_weights[l] for every other term; a
    partial loss_weights override keeps the defaults."""
    config = ZonkeyConfig.from_pretrained(str(MICRO_PATH), loss_weights={"ddmm": 0.5}, level_weights=[1.0, 0.25],
                                          regularizer_level_weights=[0.5, 2.0])
    assert config.loss_weight("ddmm") == 0.5 and config.loss_weight("patch") == 10.0
    torch.manual_seed(0)
    model = ZonkeyModel(config).train()
    batch = tokenizer(["the cat sat on the mat.", "a dog."], padding=True, return_tensors="pt")
    out = model(**batch, return_loss=True)
    expected = 0.0
    for level in range(config.num_levels):
        names = [k.split("/", 1)[1] for k in out.loss_terms if k.startswith(f"level{level}/")]
        assert {"patch", "compression", "reconstruction", "denoising"} <= set(names)
        scale = {n: (config.regularizer_level_weights if n in REGULARIZER_TERMS else config.level_weights)[level]
                 for n in names}
        level_total = sum(scale[n] * config.loss_weight(n) * out.loss_terms[f"level{level}/{n}"] for n in names)
        torch.testing.assert_close(out.loss_terms[f"loss/level{level}"], level_total)
        expected = expected + level_total
    torch.testing.assert_close(out.loss, expected)
    assert ZonkeyConfig.from_pretrained(str(MICRO_PATH)).regularizer_level_weights == [1.0, 1.0]


@pytest.mark.parametrize("overrides", [dict(ddmm_objective="single_step"), dict(time_embedding="sinusoidal")])
def test_config_switches_train(overrides, tokenizer):
    """The single-step DDMM objective and the sinusoidal time embedding train: finite loss, gradients reach
    the decoder, and the switch changes the computation (a different loss than the default at the same seed)."""
    batch = tokenizer(SHORT_TEXTS, padding=True, return_tensors="pt")
    losses = {}
    for name, extra in (("default", {}), ("switched", overrides)):
        config = ZonkeyConfig.from_pretrained(str(MICRO_PATH), **extra)
        torch.manual_seed(0)
        model = ZonkeyModel(config).train()
        torch.manual_seed(1)
        out = model(**batch, return_loss=True)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        decoder_grads = [p.grad for p in model.levels[0].decoder.parameters() if p.grad is not None]
        assert decoder_grads and sum(g.abs().sum() for g in decoder_grads) > 0
        losses[name] = out.loss.item()
        assert ("level0/ddmm" in out.loss_terms) == (config.ddmm_objective == "mixed")  # single-step: no light pass
    assert losses["default"] != losses["switched"]
