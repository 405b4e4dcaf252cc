"""The training stages behind a checkpoint (modeling_zonkey/training/lineage.py): what a continued run records in
train_results.json, and what its model card says about the time behind its weights."""

import json
from pathlib import Path

import pytest
from test_training import train_args, write_corpus


def test_the_card_says_what_a_fine_tune_continued():
    from modeling_zonkey.hub.model_card import training_summary

    history = {"completed_steps": 10, "train_bytes": 1000, "train_minutes": 2.0,
               "args": {"model_name_or_path": "pretrained/zonkey-tiny", "config_name": "configuration/x.json",
                        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-3}}
    text = training_summary(history)
    assert "continues the weights of `zonkey-tiny`" in text and "under the preset `x.json`" in text
    del history["args"]["model_name_or_path"]
    assert training_summary(history).endswith("Preset: `x.json`.")


def test_a_continued_run_records_the_stages_behind_its_weights(in_process, tmp_path):
    """train_results.json's earlier_stages: the starting folder's own run (and what it continued), so that the card
    states the whole training time."""
    train, validation, _ = write_corpus(tmp_path / "data")
    start, out, again = tmp_path / "A", tmp_path / "continued", tmp_path / "continued-again"
    extra = ("--per_device_train_batch_size", "4", "--max_train_steps", "2", "--seed", "4")
    in_process.main(train_args(train, validation, start, "--per_device_train_batch_size", "4", "--max_train_steps",
                               "8", "--seed", "3"))
    in_process.main(train_args(train, validation, out, "--model_name_or_path", str(start), *extra))
    in_process.main(train_args(train, validation, again, "--model_name_or_path", str(out), *extra))
    first = json.loads((start / "train_results.json").read_text())
    stages = json.loads((again / "train_results.json").read_text())["earlier_stages"]
    assert [stage["name"] for stage in stages] == ["A", "continued"] and [s["steps"] for s in stages] == [8, 2]
    assert stages[0]["minutes"] == pytest.approx(first["train_minutes"]) and stages[0]["minutes_complete"]
    assert first["earlier_stages"] == []  # a run from scratch
    card = (again / "README.md").read_text()
    total = stages[0]["minutes"] + stages[1]["minutes"]
    assert "continues the weights of 2 earlier stage(s), oldest first: `A` (8 steps" in card
    assert f"Before this run: 10 steps and {total:.1f} minutes." in card


def test_the_card_says_when_a_stage_lost_its_time_before_a_resume():
    from modeling_zonkey.training.lineage import stages_sentence

    text = stages_sentence([{"name": "old", "steps": 4000, "minutes": 41.9, "minutes_complete": False, "threads": "2"},
                            {"name": "new", "steps": 100, "minutes": 8.1, "preset": "p.json", "freeze_levels": "0"}])
    assert "`old` (4,000 steps, 41.9 minutes after a resume, 2 threads)" in text
    assert "`new` (100 steps, 8.1 minutes, preset `p.json`, level(s) 0 frozen)" in text
    assert text.endswith("Before this run: 4,100 steps and at least 50.0 minutes.")


def test_stages_of_older_records_are_followed_through_their_starting_folders(tmp_path):
    from modeling_zonkey.training.lineage import training_stages

    def record(name: str, parent: str | None, minutes: float | None) -> Path:
        (tmp_path / name).mkdir()
        history = {"completed_steps": 10, "train_minutes": minutes, "train_minutes_this_run": 3.0,
                   "args": {"model_name_or_path": parent, "threads": "1"}}
        (tmp_path / name / "train_results.json").write_text(json.dumps(history))
        return tmp_path / name

    record("base", None, None)  # resumed without its earlier time: only the part after the resume is known
    record("middle", str(tmp_path / "base"), 5.0)
    stages = training_stages(record("last", str(tmp_path / "middle"), 7.0))
    assert [(s["name"], s["minutes"], s["minutes_complete"]) for s in stages] == [
        ("base", 3.0, False), ("middle", 5.0, True), ("last", 7.0, True)]
    assert training_stages(tmp_path / "not-a-run") == [] and training_stages("org/a-hub-id") == []
    record("in-place", str(tmp_path / "in-place"), 2.0)  # an older run that continued its own folder
    assert [s["name"] for s in training_stages(tmp_path / "in-place")] == ["in-place"]
    (tmp_path / "in-place" / "train_results.json").write_text("{not json")
    assert training_stages(tmp_path / "in-place") == []
