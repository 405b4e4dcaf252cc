"""evaluation/hierarchy.py's level0_errors: level 0's own byte errors at t = 0 by segment length and window position,
checked with decoders whose errors are known."""

import pytest
import torch

from modeling_zonkey.decoder import DecoderOutput
from modeling_zonkey.evaluation.hierarchy import level0_errors

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["The cat sat on the mat, and the dog ran far away.", "Old men read long books in 1850."]


class KnownDecoder:
    """Returns each segment's own byte embeddings (the true window), with window position `broken` (if any) replaced
    by another byte: a decoder with no errors, or with errors exactly there."""

    def __init__(self, windows: torch.Tensor, wrong_byte: torch.Tensor, broken: int | None):
        self.windows, self.wrong_byte, self.broken = windows, wrong_byte, broken

    def __call__(self, latents, t, condition=None):
        sequence = self.windows.clone()
        if self.broken is not None:
            sequence[:, self.broken] = self.wrong_byte
        return DecoderOutput(sequence, torch.ones(sequence.shape[:2]))


@pytest.mark.parametrize("broken", [None, 2])
def test_level0_errors_counts_each_owned_byte_at_its_length_and_position(make_model, tokenizer, broken,
                                                                        monkeypatch):
    model = make_model(seed=0)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        segments = model(ids, mask).levels[0].segments
        windows = segments.gather(model.embed_bytes(ids))
    own = segments.ownership > 0.5
    tilde = model.embed_bytes(torch.tensor([ord("~")]))[0]
    monkeypatch.setattr(model.levels[0].decoder, "forward", KnownDecoder(windows, tilde, broken))
    errors = level0_errors(model, [(ids, mask)])
    lengths = own.sum(1)
    assert {n: m["bytes"] for n, m in errors["by_length"].items()} == {
        int(n): int(lengths[lengths == n].sum()) for n in lengths.unique() if n > 0}
    assert sum(m["bytes"] for m in errors["by_length"].values()) == int(own.sum()) == int(mask.sum())
    rates = errors["error_rate_by_position"]
    assert len(rates) == model.config.window_length[0]
    if broken is None:
        assert all(r == 0.0 for r in rates) and all(m["error_rate"] == 0.0 for m in errors["by_length"].values())
        return
    # only position 2 is wrong, in every segment that owns it ('~' is in no text here)
    assert rates[broken] == 1.0 and sum(rates) == 1.0
    for n, m in errors["by_length"].items():
        assert m["error_rate"] == pytest.approx(1.0 / n if n > broken else 0.0)
    assert sum(m["share_of_errors"] for m in errors["by_length"].values()) == pytest.approx(1.0)
