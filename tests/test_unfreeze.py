"""--unfreeze_at_step: one training run that brings the frozen levels in later (the README's 10-minute schedule
trains level 0 alone first). The frozen levels keep their weights until the step, then train; a resume across the
step equals the uninterrupted run; the records and the card say what was frozen, and for how long."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_training import train_args, write_corpus

FREEZE = ("--per_device_train_batch_size", "4", "--max_train_steps", "5", "--seed", "3", "--learning_rate", "1e-3",
          "--freeze_levels", "1", "--unfreeze_at_step", "3", "--checkpointing_steps", "1")


def level_weights(folder, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith(prefix)}


def changed(a: dict, b: dict) -> int:
    return sum(not torch.equal(a[k], b[k]) for k in a)


def test_frozen_levels_keep_their_weights_until_the_step_then_train(in_process, tmp_path, caplog):
    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "run"
    in_process.main(train_args(train, validation, out, *FREEZE))
    first, frozen_end, last = (out / "step_1", out / "step_3", out / "step_5")
    assert changed(level_weights(first, "levels.1."), level_weights(frozen_end, "levels.1.")) == 0
    assert changed(level_weights(frozen_end, "levels.1."), level_weights(last, "levels.1.")) > 0
    assert changed(level_weights(first, "levels.0."), level_weights(frozen_end, "levels.0.")) > 0
    assert "step 3: level(s) [1] join training (--unfreeze_at_step 3)" in caplog.text
    record = json.loads((out / "train_results.json").read_text())["args"]
    assert record["freeze_levels"] == [1] and record["unfreeze_at_step"] == 3
    assert "level(s) [1] frozen for the first 3 steps" in (out / "README.md").read_text()


def test_freeze_splitters_keeps_the_segmentation_through_the_unfreezing(in_process, tmp_path):
    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "run"
    in_process.main(train_args(train, validation, out, *FREEZE, "--freeze_splitters", "0"))
    first, last = level_weights(out / "step_1", "levels.0."), level_weights(out / "step_5", "levels.0.")
    splitter = [k for k in first if k.startswith("levels.0.splitter.")]
    assert splitter and all(torch.equal(first[k], last[k]) for k in splitter)
    rest = [k for k in first if k not in splitter]
    assert changed({k: first[k] for k in rest}, {k: last[k] for k in rest}) > 0
    above = "levels.1.splitter."
    assert changed(level_weights(out / "step_3", above), level_weights(out / "step_5", above)) > 0
    record = json.loads((out / "train_results.json").read_text())["args"]
    assert record["freeze_splitters"] == [0]
    assert "the segmentation of level(s) [0] fixed" in (out / "README.md").read_text()


def test_a_run_resumed_after_the_step_trains_every_level_as_the_uninterrupted_run(in_process, tmp_path):
    train, validation, _ = write_corpus(tmp_path / "data")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    in_process.main(train_args(train, validation, whole, *FREEZE))
    in_process.main(train_args(train, validation, parts, *FREEZE, "--stop_after_steps", "4"))
    in_process.main(train_args(train, validation, parts, *FREEZE, "--resume_from_checkpoint", "latest"))
    reference, resumed = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_unfreeze_at_step_needs_freeze_levels(in_process, tmp_path, capsys):
    with pytest.raises(SystemExit):
        in_process.parse_args(["--config_name", "x.json", "--output_dir", str(tmp_path), "--unfreeze_at_step", "3"])
    assert "--unfreeze_at_step N (N >= 1) ends a freeze: give it with --freeze_levels" in capsys.readouterr().err


def test_unfreeze_at_step_is_refused_across_processes():
    from modeling_zonkey.training.launch import check_launch
    from modeling_zonkey.training.run_folder import TrainingError

    accelerator = SimpleNamespace(num_processes=2)
    with pytest.raises(TrainingError, match="needs one process"):
        check_launch(SimpleNamespace(unfreeze_at_step=10, ema_decay=None), accelerator)


def test_a_later_stage_says_how_long_its_start_was_frozen():
    from modeling_zonkey.training.lineage import stages_sentence

    text = stages_sentence([{"name": "demo", "steps": 1872, "minutes": 10.0, "freeze_levels": [1],
                             "unfreeze_at_step": 1400}])
    assert "`demo` (1,872 steps, 10.0 minutes, level(s) [1] frozen for its first 1,400 steps)" in text
    assert "`a` (5 steps, 1.0 minutes, level(s) [0] frozen)" in stages_sentence(
        [{"name": "a", "steps": 5, "minutes": 1.0, "freeze_levels": [0]}])
