"""examples/experiments/sampler_steps.py (the DDMM check) on a micro folder: one row per (sampler, level, t), a
score per step count; and latent_identification.py's lookup."""

import json
import sys
from pathlib import Path

import pytest
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "sampler_steps.py"
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "sampler_steps")


def test_it_writes_one_row_per_sampler_level_and_noise_level(script, micro_folder, tmp_path, monkeypatch, capsys):
    output = tmp_path / "rows.jsonl"
    monkeypatch.setattr(sys, "argv", ["sampler_steps.py", str(micro_folder), "--samplers", "ddmm", "ddim",
                                      "--noise_levels", "0.5", "--sampler_steps", "1", "2", "--documents", "2",
                                      "--options", '{"clamp_max_t": 0.3}', "--output", str(output)])
    script.main()
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["sampler"], r["level"]) for r in rows] == [("ddmm", 0), ("ddmm", 1), ("ddim", 0), ("ddim", 1)]
    for row in rows:
        assert row["steps"] == [1, 2] and len(row["one_minus_cer"]) == 2 and row["options"] == {"clamp_max_t": 0.3}
        assert all(score <= 1.0 for score in row["one_minus_cer"])
    for row in rows:  # the per-byte references of one decode, at level 0 only
        if row["level"] == 0:
            assert 0.0 < row["one_decode"]["draw"] < 1.0 and 0.0 <= row["one_decode"]["nearest"] <= 1.0
        else:
            assert row["one_decode"] is None
    assert rows[0]["one_decode"] == rows[2]["one_decode"]  # seeded: the same decode for either sampler
    # one step is the same decode whatever the sampler (the samplers differ only in how they re-noise)
    assert rows[0]["one_minus_cer"][0] == rows[2]["one_minus_cer"][0]
    assert capsys.readouterr().out.count("| " + str(micro_folder)) == 4



def test_the_step_count_asked_of_generate_runs_exactly_k_steps(script):
    import math

    for t in [i / 100 for i in range(1, 101)]:
        for steps in range(1, 120):
            assert max(1, math.ceil(script.num_steps_for(steps, t) * t)) == steps, (t, steps)


def test_an_unknown_option_is_refused_by_name(script, micro_folder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sampler_steps.py", str(micro_folder), "--options", '{"num_stepz": 3}'])
    with pytest.raises(SystemExit):
        script.main()
    assert "num_stepz" in capsys.readouterr().err


def test_latent_identification_finds_every_clean_latent_at_t_0_and_fewer_in_noise(make_model):
    module = import_script(SCRIPT.with_name("latent_identification.py"), "latent_identification")
    documents = [b"The cat sat on the mat. " * 4, b"A dog ran in the park, and then home. " * 3]
    results = module.identification(make_model(perturb=False), documents, [0.0, 0.999])
    assert set(results) == {0, 1}
    for row in results.values():
        assert row["latents"] > 0
        assert row[0.0] == 1.0
        assert row[0.999] < 1.0
