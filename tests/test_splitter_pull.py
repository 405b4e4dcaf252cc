"""examples/experiments/splitter_pull.py: the signed pull of each loss term on the level-0 splitter's logits."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import import_script

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.suite import document_batches

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "splitter_pull.py"
pytestmark = pytest.mark.usefixtures("single_thread")
DOCUMENTS = [b"the cat sat on the mat, and the international dog barked", b"a  long  wordlessstretchofbytes here"]


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "splitter_pull")


def test_position_kinds(script):
    kinds = script.position_kinds([b"ab cd", b"x"], 6)
    assert kinds.tolist() == [[-1, 1, 2, 0, 1, -1], [-1, -1, -1, -1, -1, -1]]


def test_the_terms_pulls_add_up_to_the_whole_losss_gradient(script, micro_config):
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config)
    result = script.pulls(model, DOCUMENTS, 2, seed=3)
    # the same batch and boundaries (seed 3): the gradient of level 0's weighted total, averaged by kind
    captured = {}
    model.levels[0].splitter.head.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    torch.manual_seed(3)
    model.train()
    (chunk, ids, mask), = document_batches(DOCUMENTS, 2, torch.device("cpu"))
    out = model(input_ids=ids, attention_mask=mask, return_loss=True)
    (grad,) = torch.autograd.grad(out.loss, captured["logits"])  # every level's terms
    assert "level 1 (all)" in result["terms"]
    kinds = script.position_kinds(chunk, ids.shape[1])
    expected = [float(grad.squeeze(-1)[kinds == k].mean()) for k in range(3)]
    assert result["terms"]["(all)"] == pytest.approx(expected, rel=1e-4, abs=1e-12)
    assert any(abs(v) > 0 for v in expected)
    # the patch term only ever asks for more starts (P(no start in a window) falls as any p rises)
    assert all(v <= 0 for v in result["terms"]["patch"]) and result["terms"]["patch"][1] < 0
    assert 0 < result["p"][0] < 1 and result["bytes_per_segment"] >= 1


def test_a_missing_checkpoint_is_a_clear_error(script, tmp_path, micro_config, monkeypatch):
    micro_config.save_pretrained(tmp_path)
    monkeypatch.setattr(sys, "argv", ["splitter_pull.py", str(tmp_path), "--steps", "500"])
    with pytest.raises(SystemExit, match="step_500 has no model.safetensors"):
        script.main()
