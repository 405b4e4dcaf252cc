"""examples/generate.py: every mode of the example script, its --stream output equal to the batch output."""

import re
from pathlib import Path

import pytest
from conftest import import_script

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)


def test_generate_example_runs_every_mode(model, tokenizer, tmp_path, capsys):
    script = import_script(Path(__file__).resolve().parents[1] / "examples" / "generate.py", "generate_example")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    common = [str(tmp_path), "--num_steps", "3", "--num_samples", "2"]
    assert script.main(common + ["--show_segmentation"]) == 0
    assert script.main(common + ["--prompt", "the cat "]) == 0
    assert script.main(common + ["--infill", "the [GAP] mat."]) == 0
    assert script.main(common + ["--reconstruct", "the cat sat.", "--noise_level", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample 1") == 4
    assert "\nthe cat " in out and "mat.\n" in out
    reconstruction = tokenizer.decode(model.reconstruct(**tokenizer(["the cat sat."], return_tensors="pt"))[0])
    assert f"\n{reconstruction}\n" in out
    assert "|" in out  # the segmentation view
    assert script.main(common + ["--infill", "the [GAP] mat.", "--max_new_tokens", "30"]) == 0
    long_infill = capsys.readouterr().out
    assert long_infill.count("--- sample") == 2 and long_infill.count("mat.\n") == 2
    plain = script.generate(model, tokenizer, script.parse_args(common + ["--max_new_tokens", "25"]))
    streamed = script.generate(model, tokenizer, script.parse_args(common + ["--max_new_bytes", "25", "--stream"]))
    shown = capsys.readouterr().out  # (--max_new_bytes: the old flag name still works)
    assert streamed == plain and all(len(text.encode("utf-8", "surrogateescape")) >= 25 for text in plain)
    assert "\0337\033[33m" in shown  # drafts were shown, then the final text
    final = re.sub("\0337\033\\[33m.*?\033\\[0m|\0338\033\\[J", "", shown, flags=re.S)
    assert final == "".join(f"--- sample {i}\n{text}\n" for i, text in enumerate(plain))
    assert script.main(common + ["--infill", "no marker here"]) == 1
    assert script.main(common + ["--num_steps", "0"]) == 1
    assert script.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "error: --infill needs exactly one [GAP] marker" in err
    assert "error: num_steps must be a positive integer" in err
    assert "no model folder" in err
