"""examples/experiments/word_discovery.py: the splitter's early training, seed by seed, on the micro preset."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_script
from transformers import set_seed

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "experiments" / "word_discovery.py"
MICRO = str(REPO / "configuration" / "zonkey-micro.json")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "word_discovery")


def test_it_records_boundary_scores_and_the_splitters_gradients(script, tmp_path, capsys):
    output = tmp_path / "records.json"
    script.main(["--config_name", MICRO, "--seeds", "0", "--steps", "2", "--log_every", "1", "--warmup_steps", "1",
                 "--validation_documents", "4", "--output", str(output)])
    records = json.loads(output.read_text())["records"]
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records:
        assert 0.0 <= record["f1"] <= record["f1_within_1"] <= 1.0
        assert 0.0 < record["mean_p_bos"] < 1.0 and 0.0 <= record["soft_p_bos"] <= 1.0
    # the splitter learns through the reconstruction (existence, ownership, density), its priors and the level above
    for record in records[:2]:
        assert record["grad_reconstruction"] > 0 and record["grad_regularizers"] > 0 and record["grad_level1+"] > 0
    assert "found words (F1 >= 0.6 at step 2): " in capsys.readouterr().out


def test_submodules_start_as_another_seed_would_and_the_training_noise_stays_the_seeds(script):
    config = script.build_config(script.parse_args(["--config_name", MICRO]))
    args = script.parse_args(["--config_name", MICRO, "--init_from", "levels.0.splitter=5"])
    model = script.initial_model(args, config, seed=1)
    after = torch.rand(3)
    set_seed(5)
    donor = script.ZonkeyModel(config)
    set_seed(1)
    plain = script.ZonkeyModel(config)
    assert torch.equal(torch.rand(3), after)
    for name, value in model.state_dict().items():
        expected = (donor if name.startswith("levels.0.splitter.") else plain).state_dict()[name]
        assert torch.equal(value, expected), name
    assert not torch.equal(donor.levels[0].splitter.head.weight, plain.levels[0].splitter.head.weight)


def test_a_zero_splitter_head_starts_every_position_at_the_prior(script):
    args = script.parse_args(["--config_name", MICRO, "--zero_splitter_head"])
    config = script.build_config(args)
    model = script.initial_model(args, config, seed=0).eval()
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        p = model(ids, torch.ones_like(ids)).levels[0].bos_probs[:, 1:]
    assert torch.allclose(p, torch.full_like(p, 2.0 / config.window_length[0]), atol=1e-6)


@pytest.mark.parametrize("argv, named", [(["--set", "density_offsett=0.5"], "density_offsett"),
                                         (["--set", "density_offset"], "NAME=VALUE"),
                                         (["--set", "hidden_size=[128, 128]"], "hidden_size[1] must equal"),
                                         (["--init_from", "levels.0.splitter"], "MODULE=SEED")])
def test_a_bad_arm_is_refused_by_name(script, argv, named, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["word_discovery.py"])
    with pytest.raises(SystemExit) as exit_info:
        script.build_config(script.parse_args(["--config_name", MICRO, *argv]))
    assert named in (str(exit_info.value.code) + capsys.readouterr().err)
