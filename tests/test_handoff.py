"""The handoff term (loss_weights["handoff"], ZonkeyModel.handoff_term): level 1's clean-pass estimates of the level-0
latents, decoded by level 0 and scored against the bytes those latents encode. Off by default; when on, each
estimate is paired with the latent its position holds, both decoders learn from it, and training on it lowers it."""

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.level import owned_slots

pytestmark = pytest.mark.usefixtures("single_thread")
TEXTS = [b"the cat sat on the mat, and the international dog barked at the cat. The dog ran to the mat again.",
         b"a long stretch of words in a second document, with a comma or two, and a full stop."]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(TEXTS), 128), 256)
    mask = torch.zeros(len(TEXTS), 128, dtype=torch.long)
    for row, text in enumerate(TEXTS):
        ids[row, : len(text)] = torch.tensor(list(text))
        mask[row, : len(text)] = 1
    return ids, mask


def with_handoff(config: ZonkeyConfig, weight: float = 1.0) -> ZonkeyConfig:
    return ZonkeyConfig.from_dict({**config.to_dict(), "loss_weights": {**config.loss_weights, "handoff": weight}})


def test_each_estimate_is_paired_with_the_latent_its_position_holds(micro_config, monkeypatch):
    torch.manual_seed(0)
    model = ZonkeyModel(with_handoff(micro_config)).train()
    seen = {}
    model.levels[1].register_forward_pre_hook(lambda module, args: seen.__setitem__("x1", args[0]))
    term = ZonkeyModel.handoff_term

    def recording(self, index, outputs, below):
        seen.update(outputs=outputs, below=below)
        return term(self, index, outputs, below)

    monkeypatch.setattr(ZonkeyModel, "handoff_term", recording)
    model(*batch(), return_loss=True)
    lower, upper = seen["outputs"]
    chosen, estimates = upper.decoded
    own, index = owned_slots(upper.segments, chosen, seen["below"].slots)
    assert estimates.shape[:2] == own.shape and own.sum() == len(index) > 5
    level0_latents = lower.latents[lower.latent_mask]
    # the level-1 window vector at each owned position IS the level-0 latent the pairing names
    assert torch.equal(upper.segments.gather(seen["x1"])[chosen][own], level0_latents[index])
    assert len(index.unique()) == len(index)  # no latent is scored twice
    # no decoded segment at all: the term is a zero that still backpropagates, not an error from an empty decoder call
    upper.decoded = (chosen[:0], estimates[:0])
    empty = term(model, 1, seen["outputs"], seen["below"])
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_the_handoff_term_is_off_by_default_and_trains_both_decoders(micro_config):
    ids, mask = batch()
    torch.manual_seed(0)
    default = ZonkeyModel(micro_config).train()
    assert not any("handoff" in name for name in default(ids, mask, return_loss=True).loss_terms)
    torch.manual_seed(0)
    model = ZonkeyModel(with_handoff(micro_config)).train()
    terms = model(ids, mask, return_loss=True).loss_terms
    assert "level0/handoff" not in terms and torch.isfinite(terms["level1/handoff"]) and terms["level1/handoff"] > 0
    decoders = [next(model.levels[level].decoder.parameters()) for level in (1, 0)]
    grads = torch.autograd.grad(terms["level1/handoff"], decoders)
    assert all(float(g.norm()) > 0 for g in grads)
    # with level 0 frozen the term still trains level 1 (through level 0's decoder, which does not move)
    model.freeze_levels([0])
    torch.manual_seed(0)
    frozen = model(ids, mask, return_loss=True).loss_terms
    assert not decoders[1].requires_grad
    (grad,) = torch.autograd.grad(frozen["level1/handoff"], [decoders[0]])
    assert float(grad.norm()) > 0


def test_training_on_the_handoff_term_lowers_it(micro_config):
    ids, mask = batch()
    torch.manual_seed(0)
    model = ZonkeyModel(with_handoff(micro_config)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(40):
        torch.manual_seed(1)  # the same boundaries and noise every step
        handoff = model(ids, mask, return_loss=True).loss_terms["level1/handoff"]
        values.append(float(handoff.detach()))
        optimizer.zero_grad()
        handoff.backward()
        optimizer.step()
    assert values[-1] < 0.8 * values[0], values  # 5.65 -> 3.95 here
