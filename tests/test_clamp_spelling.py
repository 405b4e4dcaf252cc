"""`spell` (what level 0 spells from word latents, and how sure it is) and examples/experiments/clamp_spelling.py,
which records it at every step of sampling from noise and can clamp only the estimates spelled with confidence."""

import json
from pathlib import Path

import pytest
import torch
from conftest import import_script

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.diagnostics import byte_distribution, spell

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "clamp_spelling.py"
pytestmark = pytest.mark.usefixtures("single_thread")


def test_spell_returns_the_nearest_bytes_up_to_the_existence_cut_and_their_mean_top_probability(make_model):
    model = make_model()
    torch.manual_seed(0)
    latents = torch.randn(5, model.config.latent_size(0))
    with torch.no_grad():
        decoded = model.levels[0].decoder(latents, torch.zeros(5))
        probabilities = byte_distribution(model, decoded.sequence)
    spelled = spell(model, latents)
    assert len(spelled) == 5
    for i, (text, confidence) in enumerate(spelled):
        exists = (decoded.existence[i] > model.config.existence_threshold).tolist()
        length = max(1, exists.index(False) if False in exists else len(exists))
        assert text == bytes(model.nearest_bytes(decoded.sequence[i, :length]).tolist())
        assert confidence == pytest.approx(float(probabilities[i, :length].max(-1).values.mean()), abs=1e-6)
        assert 1.0 / 256 < confidence <= 1.0
    # read as noised, the decoder gives another spelling or confidence
    assert spell(model, latents, noise_level=0.7) != spelled


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "clamp_spelling")


def run(script, folder, tmp_path, *extra) -> dict:
    output = tmp_path / f"run{len(list(tmp_path.iterdir()))}.json"
    script.main([str(folder), "--samples", "3", "--options", '{"num_steps": 4}', "--every", "1",
                 "--output", str(output), *extra])
    return json.loads(output.read_text())


def generated_texts(folder, **options) -> list[str]:
    model = ZonkeyModel.from_pretrained(folder).eval()
    ids = model.generate(num_return_sequences=3, num_steps=4, seed=0, **options)
    return [bytes([b for b in row.tolist() if b < 256]).decode("utf-8", "replace") for row in ids]


def test_it_records_every_step_and_without_a_gate_samples_as_generate_does(script, micro_folder, tmp_path, capsys):
    result = run(script, micro_folder, tmp_path)
    assert [round(row["t"], 6) for row in result["steps"]] == [1.0, 0.75, 0.5, 0.25]
    for row in result["steps"]:
        assert row["words"] > 0 and 0.0 <= row["long_share"] <= 1.0
    assert result["texts"] == generated_texts(micro_folder)
    assert capsys.readouterr().out.count("| 0.25 |") == 1


def test_a_gate_above_every_confidence_clamps_nothing_and_a_middle_one_changes_the_samples(script, micro_folder,
                                                                                           tmp_path):
    ungated = run(script, micro_folder, tmp_path)["texts"]
    unclamped = generated_texts(micro_folder, clamp=False)
    assert unclamped != ungated
    assert run(script, micro_folder, tmp_path, "--confidence_gate", "1.5")["texts"] == unclamped
    assert run(script, micro_folder, tmp_path, "--options", '{"num_steps": 4, "clamp": false}')["texts"] == unclamped
    confidences = []
    for row in run(script, micro_folder, tmp_path)["steps"]:
        confidences += [row["confidence_short"]]
    middle = sorted(confidences)[len(confidences) // 2]
    assert run(script, micro_folder, tmp_path, "--confidence_gate", str(middle))["texts"] != ungated


def test_a_bad_option_is_refused_by_name(script, micro_folder, capsys):
    with pytest.raises(SystemExit):
        script.main([str(micro_folder), "--options", '{"num_stepz": 3}'])
    assert "num_stepz" in capsys.readouterr().err
