"""examples/experiments/fixed_segmentation.py: level 0 trained on fixed cuts (words, shifted words, random), micro."""

import json
from pathlib import Path

import pytest
import torch
from conftest import import_script

from modeling_zonkey.evaluation.metrics import word_starts
from modeling_zonkey.training.data import ZonkeyDataCollator

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "experiments" / "fixed_segmentation.py"
MICRO = str(REPO / "configuration" / "zonkey-micro.json")
TEXTS = [b"The river flows through the old town and into the sea.", b"A dog ran home."]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "fixed_segmentation")


@pytest.fixture
def batch():
    return ZonkeyDataCollator(pad_token_id=256)([{"input_ids": list(text)} for text in TEXTS])


def starts(cuts: torch.Tensor, row: int) -> list[int]:
    return cuts[row].nonzero().flatten().tolist()


def test_each_arm_cuts_where_it_says(script, batch):
    generator = torch.Generator().manual_seed(0)
    words = script.arm_cuts("words", batch, generator, None)
    shifted = script.arm_cuts("shifted", batch, generator, None)
    random = script.arm_cuts("random", batch, generator, None)
    for row, text in enumerate(TEXTS):
        gold = word_starts(text)
        assert starts(words, row) == gold
        assert starts(shifted, row) == [0] + [s + script.SHIFT for s in gold[1:] if s + script.SHIFT < len(text)]
        assert len(starts(random, row)) == len(gold) and starts(random, row)[0] == 0
        assert not (words | shifted | random)[row, len(text):].any()  # nothing on padding
    assert starts(random, 0) != starts(words, 0)


def test_the_fixed_splitter_gives_sharp_existence_and_keeps_gaps_within_the_window(script, batch):
    splitter = script.FixedSplitter(window_length=8)
    splitter.cuts = script.arm_cuts("words", batch, torch.Generator(), None)
    valid = batch["attention_mask"].bool()
    out = splitter(torch.zeros(*valid.shape, 4), valid)
    assert set(out.bos_probs.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out.bos_probs.bool(), out.boundaries)
    assert (out.boundaries | ~splitter.cuts)[valid].all()  # every chosen cut kept
    for row in range(len(TEXTS)):  # forced cuts: no gap longer than the window
        cut = starts(out.boundaries, row) + [int(valid[row].sum())]
        assert max(b - a for a, b in zip(cut, cut[1:])) <= 8


def test_it_trains_every_arm_and_reports_loss_and_bytes(script, tmp_path, capsys):
    output = tmp_path / "records.json"
    script.main(["--config_name", MICRO, "--arms", "words", "shifted", "--steps", "2", "--eval_every", "1",
                 "--warmup_steps", "1", "--validation_documents", "4", "--output", str(output)])
    records = json.loads(output.read_text())["records"]
    assert [(r["arm"], r["step"]) for r in records] == [("words", 1), ("words", 2), ("shifted", 1), ("shifted", 2)]
    for record in records:
        assert 0.0 < record["reconstruction_loss"] < 20.0 and 0.0 <= record["bytes_back"] <= 1.0
    # the arms differ only by their cuts: the same seed gives different losses after training on different cuts
    assert records[1]["reconstruction_loss"] != records[3]["reconstruction_loss"]
    assert "| words |" in capsys.readouterr().out


def test_an_unknown_arm_is_refused_by_name(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--arms", "wordz"])
    assert "wordz" in capsys.readouterr().err
