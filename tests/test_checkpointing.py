"""Training-state checkpoints (modeling_zonkey/training/checkpointing.py): atomic save under a simulated kill, the
"latest" lookup, the barrier that keeps other processes' files inside the folder, and the EMA of the weights.
A fake accelerator stands in for accelerate (save_state writes files into the folder it is given)."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from modeling_zonkey.training import checkpointing
from modeling_zonkey.training.checkpointing import (
    EMA,
    STATE_FILE,
    CheckpointError,
    changed_arguments,
    find_checkpoint,
    foreign_checkpoints,
    read_state,
    save_checkpoint,
    write_run_id,
)


class Killed(BaseException):
    """Stands for SIGKILL / preemption: not an Exception, so nothing on the way catches it."""


class FakeAccelerator:
    """The part of accelerate.Accelerator that save_checkpoint uses. save_state writes model.safetensors and
    random_states_<rank>.pkl; with kill_after_files=k it is killed after writing k files."""

    def __init__(self, process_index=0, content=b"weights", kill_after_files=None, events=None):
        self.process_index = process_index
        self.is_main_process = process_index == 0
        self.content = content
        self.kill_after_files = kill_after_files
        self.events = [] if events is None else events

    device = torch.device("cpu")

    def wait_for_everyone(self):
        self.events.append("barrier")

    def gather(self, flag):  # agreement.failed_processes: a barrier that also tells whether any process failed
        self.events.append("agree")
        return flag

    def save_state(self, output_dir):
        self.events.append(f"save_state {self.process_index}")
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        files = [("model.safetensors", self.content), (f"random_states_{self.process_index}.pkl", b"rng")]
        for count, (name, data) in enumerate(files):
            if self.kill_after_files is not None and count == self.kill_after_files:
                raise Killed()
            (folder / name).write_bytes(data)


def snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    save_checkpoint(FakeAccelerator(content=b"step 3"), tmp_path, "step_3", {"completed_steps": 3, "epoch": 0})
    before = snapshot(tmp_path / "step_3")
    for kill_after in (0, 1):  # killed before any file, and after the weights but before the RNG states
        with pytest.raises(Killed):
            save_checkpoint(FakeAccelerator(content=b"step 6", kill_after_files=kill_after), tmp_path, "step_6",
                            {"completed_steps": 6, "epoch": 0})
        assert not (tmp_path / "step_6").exists()
        assert (tmp_path / ".tmp-step_6").is_dir() and not (tmp_path / ".tmp-step_6" / STATE_FILE).exists()
        assert snapshot(tmp_path / "step_3") == before
        assert find_checkpoint(tmp_path, "latest") == tmp_path / "step_3"
        assert read_state(find_checkpoint(tmp_path, "latest"))["completed_steps"] == 3


def test_next_save_clears_a_partial_folder(tmp_path):
    with pytest.raises(Killed):
        save_checkpoint(FakeAccelerator(content=b"old", kill_after_files=1), tmp_path, "step_2", {"completed_steps": 2})
    (tmp_path / ".tmp-step_2" / "stale.bin").write_bytes(b"from the killed run")
    final = save_checkpoint(FakeAccelerator(content=b"new"), tmp_path, "step_2", {"completed_steps": 2})
    assert final == tmp_path / "step_2"
    assert sorted(snapshot(final)) == ["model.safetensors", "random_states_0.pkl", STATE_FILE]
    assert (final / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2"]


def test_saving_an_existing_name_replaces_it_whole(tmp_path):
    save_checkpoint(FakeAccelerator(content=b"first"), tmp_path, "epoch_1", {"completed_steps": 5, "x": 1})
    (tmp_path / "epoch_1" / "extra.bin").write_bytes(b"only in the first")
    save_checkpoint(FakeAccelerator(content=b"second"), tmp_path, "epoch_1", {"completed_steps": 5, "x": 2})
    assert (tmp_path / "epoch_1" / "model.safetensors").read_bytes() == b"second"
    assert not (tmp_path / "epoch_1" / "extra.bin").exists()
    assert read_state(tmp_path / "epoch_1") == {"completed_steps": 5, "x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1"]  # no .old- / .tmp- left


def test_kill_while_replacing_an_existing_name_leaves_older_checkpoints(tmp_path, monkeypatch):
    save_checkpoint(FakeAccelerator(), tmp_path, "step_2", {"completed_steps": 2})
    save_checkpoint(FakeAccelerator(), tmp_path, "step_4", {"completed_steps": 4})
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        raise Killed()  # killed at the first rename (moving the old step_4 aside)

    monkeypatch.setattr(checkpointing.os, "replace", replace)
    with pytest.raises(Killed):
        save_checkpoint(FakeAccelerator(content=b"again"), tmp_path, "step_4", {"completed_steps": 4})
    assert calls == [(tmp_path / "step_4", tmp_path / ".old-step_4")]
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step_4"  # the rename never happened


def test_every_process_writes_before_the_rename(tmp_path):
    """save_state has no barrier at its end, so the main process must wait for the others before it renames
    (else a slower process writes its RNG state into a folder that has moved)."""
    events = []
    main = FakeAccelerator(process_index=0, events=events)
    other = FakeAccelerator(process_index=1, events=events)
    save_checkpoint(other, tmp_path, "step_1", {"completed_steps": 1})  # non-main: writes, never publishes
    assert not (tmp_path / "step_1").exists() and (tmp_path / ".tmp-step_1" / "random_states_1.pkl").is_file()
    assert events == ["barrier", "save_state 1", "agree", "agree", "barrier"]
    events.clear()
    save_checkpoint(main, tmp_path, "step_1", {"completed_steps": 1})
    assert events == ["barrier", "save_state 0", "agree", "agree", "barrier"]
    # the main process clears a stale .tmp- before the first barrier: the folder now holds only its files
    assert sorted(snapshot(tmp_path / "step_1")) == ["model.safetensors", "random_states_0.pkl", STATE_FILE]


def test_find_checkpoint_latest_ignores_incomplete_folders(tmp_path):
    for name, steps in (("step_9", 9), ("step_10", 10), ("epoch_1", 7)):
        save_checkpoint(FakeAccelerator(), tmp_path, name, {"completed_steps": steps})
    (tmp_path / ".tmp-step_12").mkdir()
    (tmp_path / ".tmp-step_12" / STATE_FILE).write_text(json.dumps({"completed_steps": 12}))
    (tmp_path / "step_11").mkdir()  # no training_state.json
    (tmp_path / "step_8").mkdir()
    (tmp_path / "step_8" / STATE_FILE).write_text("{\"completed_st")  # unreadable, but older than step_10
    (tmp_path / "best_20").mkdir()
    (tmp_path / "best_20" / STATE_FILE).write_text(json.dumps({"completed_steps": 20}))
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step_10"  # by steps, not by name order
    (tmp_path / "step_13").mkdir()
    (tmp_path / "step_13" / STATE_FILE).write_text("{\"completed_st")  # unreadable and newer: no silent fallback
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'step_13' / STATE_FILE} cannot be read"):
        find_checkpoint(tmp_path, "latest")
    shutil.rmtree(tmp_path / "step_13")
    assert find_checkpoint(tmp_path, "epoch_1") == tmp_path / "epoch_1"  # a name inside output_dir
    assert find_checkpoint(tmp_path / "elsewhere", str(tmp_path / "step_9")) == tmp_path / "step_9"  # a path
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint folder"):
        find_checkpoint(tmp_path, "step_11")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty", "latest")


class DiskFull(FakeAccelerator):
    def save_state(self, output_dir):
        super().save_state(output_dir)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_partial_folder(tmp_path):
    save_checkpoint(FakeAccelerator(content=b"step 3"), tmp_path, "step_3", {"completed_steps": 3})
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(DiskFull(), tmp_path, "step_6", {"completed_steps": 6})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3"]  # the partial .tmp-step_6 was freed


def test_latest_resumes_only_the_runs_own_checkpoints(tmp_path):
    for name, steps, run_id in (("step_2", 2, "mine"), ("step_4", 4, "mine"), ("step_6", 6, "other")):
        save_checkpoint(FakeAccelerator(), tmp_path, name, {"completed_steps": steps, "run_id": run_id})
    write_run_id(tmp_path, "mine")
    assert foreign_checkpoints(tmp_path, "mine") == [tmp_path / "step_6"]
    assert find_checkpoint(tmp_path, "latest", run_id="mine") == tmp_path / "step_4"
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step_6"  # no run id (a folder of an older version)
    with pytest.raises(FileNotFoundError, match=r"\(step_2, step_4, step_6 belong to another run\)"):
        find_checkpoint(tmp_path, "latest", run_id="a third")


def test_changed_arguments_names_each_change():
    saved = {"learning_rate": 3e-4, "seed": 1, "ema_decay": None, "threads": 2}
    assert changed_arguments(saved, dict(saved)) == []
    assert changed_arguments(saved, {**saved, "seed": 2, "ema_decay": 0.9, "new_argument": 1}) == [
        "seed 1 -> 2", "ema_decay None -> 0.9"]  # arguments the checkpoint did not record are not compared
    assert changed_arguments({}, {"seed": 1}) == []  # a checkpoint of an older version records none


def test_ema_update_copy_and_state_dict():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    expected = {n: 0.75 * start[n] + 0.25 * (start[n] + 1.0) for n in start}
    restored = EMA(nn.Linear(3, 2), decay=0.75)
    restored.load_state_dict(ema.state_dict())  # what accelerate's register_for_checkpointing saves / loads
    target = nn.Linear(3, 2)
    restored.copy_to(target)
    for name, parameter in target.named_parameters():
        torch.testing.assert_close(parameter.detach(), expected[name], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(model, decay=1.0)


# ---------------------------------------------------------------- a checkpoint read as a model


def write_model_checkpoint(folder: Path, model, ema) -> Path:
    """What train_zonkey.py leaves in step_N, minus the optimizer: the training weights, the EMA, the state."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(folder / checkpointing.MODEL_FILE))
    save_file(ema.state_dict(), str(folder / checkpointing.EMA_FILE))
    (folder / STATE_FILE).write_text(json.dumps({"completed_steps": 3}))
    return folder


def test_checkpoint_model_reads_training_or_ema_weights_and_says_what_is_missing(tmp_path, micro_config):
    from modeling_zonkey import ZonkeyConfig, ZonkeyModel

    torch.manual_seed(0)
    model = ZonkeyModel(micro_config)
    ema = EMA(model, 0.9)
    with torch.no_grad():  # the training weights move on; the EMA keeps the start
        for param in model.parameters():
            param.add_(0.5)
    step = write_model_checkpoint(tmp_path / "run" / "step_3", model, ema)
    assert checkpointing.is_checkpoint(step) and not checkpointing.is_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match="give the run's model config"):  # no config.json anywhere
        checkpointing.checkpoint_model(step)
    trained = checkpointing.checkpoint_model(step, config=micro_config)
    assert not trained.training
    for name, value in model.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name
    micro_config.to_json_file(step / "config.json")  # the checkpoint's own config, as train_zonkey writes it
    averaged = checkpointing.checkpoint_model(step, "ema")
    shadows = dict(zip(ema.names, (getattr(ema, f"shadow_{i}") for i in range(len(ema.names)))))
    params = dict(averaged.named_parameters())
    assert all(torch.equal(params[name], shadow) for name, shadow in shadows.items())
    assert any(not torch.equal(params[name], dict(model.named_parameters())[name]) for name in shadows)
    (step / checkpointing.EMA_FILE).unlink()
    with pytest.raises(ValueError, match="without --ema_decay"):
        checkpointing.checkpoint_model(step, "ema")
    deeper = ZonkeyConfig.from_dict({**micro_config.to_dict(), "denoiser_layers": [2, 1]})
    with pytest.raises(ValueError, match="do not fit the config given: .*Missing key"):
        checkpointing.checkpoint_model(step, config=deeper)
    with pytest.raises(ValueError, match="weights must be one of model, ema"):
        checkpointing.checkpoint_model(step, "best")
    with pytest.raises(ValueError, match="holds no model.safetensors"):
        checkpointing.checkpoint_model(tmp_path / "run")
    # model_or_checkpoint: either kind of folder, and what each one lacks
    assert torch.equal(checkpointing.model_or_checkpoint(step).state_dict()["byte_embeddings.weight"],
                       model.state_dict()["byte_embeddings.weight"])
    model.save_pretrained(tmp_path / "saved")
    saved = checkpointing.model_or_checkpoint(tmp_path / "saved")
    assert not saved.training and torch.equal(saved.byte_embeddings.weight, model.byte_embeddings.weight)
    with pytest.raises(ValueError, match="apply to a training checkpoint"):
        checkpointing.model_or_checkpoint(tmp_path / "saved", "ema")
    with pytest.raises(ValueError, match="neither a saved model"):
        checkpointing.model_or_checkpoint(tmp_path / "run")


def test_a_resume_with_another_model_config_names_the_changed_fields(tmp_path, micro_config, capsys):
    from modeling_zonkey import ZonkeyConfig
    from modeling_zonkey.training.run_folder import warn_changed_config

    class Printer:
        print = staticmethod(print)

    micro_config.to_json_file(tmp_path / "config.json")
    assert warn_changed_config(tmp_path, micro_config, Printer()) == []
    assert warn_changed_config(tmp_path / "older", micro_config, Printer()) == []  # a checkpoint without config.json
    assert capsys.readouterr().out == ""
    staged = ZonkeyConfig.from_dict({**micro_config.to_dict(),
                                     "loss_weights": {**micro_config.loss_weights, "patch": 5.0}})
    assert warn_changed_config(tmp_path, staged, Printer()) == ["loss_weights.patch: 10.0 -> 5.0"]
    assert "another model config (loss_weights.patch: 10.0 -> 5.0)" in capsys.readouterr().out
