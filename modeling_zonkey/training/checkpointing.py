"""Training-state checkpoints written atomically, found again by "latest", and an EMA of the weights.

A checkpoint folder `step_N` (or `epoch_N`) is first written as `.tmp-step_N` and renamed when complete,
so a run killed mid-save leaves the previous checkpoints intact and never a half-written one.
"""

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .agreement import PeerFailure, failed_processes

STATE_FILE = "training_state.json"
_NAME = re.compile(r"^(step|epoch)_(\d+)$")


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder itself to disk, so the rename that publishes it cannot
    survive a crash (power loss) that its contents did not."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, name: str, state: dict,
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
                    describe: Callable[[Path], None] | None = None) -> Path:
    """accelerator.save_state into output_dir/name atomically, with `state` (step, epoch, ...) as JSON.

    Every process must call it (save_state gathers, and each process writes its RNG state); only the main
    process publishes. The state is written to `.tmp-NAME` (training_state.json last), flushed, and renamed
    to NAME once every process has finished writing. An existing NAME is first moved aside to `.old-NAME`
    and deleted only after the new one is in place, so no moment exists without a complete NAME or older
    checkpoint. A run killed at any point leaves the previous checkpoints intact; leftovers `.tmp-*` and
    `.old-*` are ignored by find_checkpoint and cleared by the next save of the same name.
    `tensors`: extra safetensors files (file name -> tensors, e.g. the EMA weights) written into the checkpoint by the
    main process: a checkpoint holds no pickled state of this project's own. `describe(folder)`: writes the files that
    make the checkpoint a model folder too (config, generation config, tokenizer: `from_pretrained` loads its training
    weights, `checkpoint_model` its EMA), by the main process.

    A write that fails (OSError, e.g. a full disk) on any process stops every process at the same point
    (agreement.failed_processes, in place of the barriers): the partial `.tmp-NAME` is deleted once no process writes
    into it any more, the failing process re-raises its OSError and the others raise PeerFailure."""
    output_dir = Path(output_dir)
    final, tmp, old = output_dir / name, output_dir / f".tmp-{name}", output_dir / f".old-{name}"
    if accelerator.is_main_process:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(tmp))
    except OSError as err:
        error = err
    # save_state has no barrier at its end: this one also waits for the others to finish writing
    failed = failed_processes(accelerator, error is not None)
    if not failed and accelerator.is_main_process:
        try:
            for file_name, values in (tensors or {}).items():
                save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(tmp / file_name))
            if describe is not None:
                describe(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            _fsync_tree(tmp)
        except OSError as err:
            error = err
    failed = failed or failed_processes(accelerator, error is not None)
    if failed:  # free what was written; the complete checkpoints are untouched
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise PeerFailure(f"process(es) {failed} could not write the checkpoint {final}; this process stopped with "
                          "them (their error line says why).")
    if accelerator.is_main_process:
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir: str | os.PathLike, requested: str, run_id: str | None = None) -> Path:
    """Resolve --resume_from_checkpoint: a folder (a path, or a name inside output_dir), or "latest" (the
    complete step_N / epoch_N folder with the most optimizer steps in output_dir that belongs to the run `run_id`, when
    given; partial `.tmp-*` folders and folders without training_state.json are ignored). Raises FileNotFoundError
    with what to fix, CheckpointError when a newer checkpoint's training_state.json cannot be read (no silent fallback
    to an older one)."""
    if requested != "latest":
        path = Path(requested)
        if not path.is_dir() and (Path(output_dir) / requested).is_dir():
            path = Path(output_dir) / requested
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume_from_checkpoint {requested}: not a complete checkpoint folder "
                                    f"(no {STATE_FILE}); pass a step_N/epoch_N folder or 'latest'.")
        return path
    candidates = complete_checkpoints(output_dir)
    foreign = foreign_checkpoints(output_dir, run_id)
    mine = [entry for entry in candidates if entry[2] not in foreign]
    newest = max(mine) if mine else None
    # a damaged step_N is skipped only when an intact checkpoint of this run is newer (epoch_N cannot be ordered)
    damaged = [path for path in checkpoint_folders(output_dir) if all(path != entry[2] for entry in candidates)
               and not (newest and path.name.startswith("step_") and _folder_number(path) < newest[0])]
    if damaged:
        raise CheckpointError(f"{damaged[-1] / STATE_FILE} cannot be read (cut short or edited?), so 'latest' would "
                              f"silently resume an older checkpoint: delete {damaged[-1].name} or pass the checkpoint "
                              "to resume as --resume_from_checkpoint.")
    if newest is None:
        other = f" ({', '.join(p.name for p in foreign)} belong to another run)" if foreign else ""
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint (step_N / epoch_N folder "
                                f"with {STATE_FILE}) of this run in {output_dir}{other}.")
    return newest[2]


def foreign_checkpoints(output_dir: str | os.PathLike, run_id: str | None) -> list[Path]:
    """Complete checkpoints in output_dir written by another run than `run_id` (none when run_id is None)."""
    if run_id is None:
        return []
    return [path for _, _, path in complete_checkpoints(output_dir) if read_state(path).get("run_id") != run_id]


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Every step_N / epoch_N folder of output_dir holding a training_state.json, readable or not, by N."""
    return sorted((p for p in Path(output_dir).glob("*") if _NAME.match(p.name) and (p / STATE_FILE).is_file()),
                  key=_folder_number)


def _folder_number(path: Path) -> int:
    return int(_NAME.match(path.name).group(2))


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, int, Path]]:
    """(optimizer steps, 1 for epoch_N, folder) of every complete step_N / epoch_N checkpoint, oldest first."""
    candidates = []
    for path in checkpoint_folders(output_dir):
        try:
            steps = int(json.loads((path / STATE_FILE).read_text())["completed_steps"])
        except (ValueError, KeyError, TypeError):
            continue
        candidates.append((steps, int(path.name.startswith("epoch_")), path))
    return sorted(candidates)


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints (main process only); returns the deleted folders."""
    removed = [path for _, _, path in complete_checkpoints(output_dir)[:-keep]]
    for path in removed:
        shutil.rmtree(path)
    return removed


def pickled_files(checkpoint: Path) -> list[str]:
    """Files of a checkpoint that accelerate would unpickle as registered custom objects (this project registers none:
    such a file was written by an older version, or put there by someone else)."""
    return sorted(p.name for p in Path(checkpoint).glob("custom_checkpoint_*.pkl"))


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


class CheckpointError(ValueError):
    """A checkpoint part that cannot be read (truncated, edited, missing): the message names the file."""


_STATE_KEYS = ("completed_steps", "epoch", "batches_in_epoch", "train_bytes")


def verify_checkpoint(checkpoint: str | os.PathLike, process_index: int = 0) -> dict:
    """Read every part of a checkpoint before any of it is loaded into the run, and return its training state.

    accelerate's load_state would report a truncated weights file as a raw SafetensorError, a damaged optimizer as a
    size mismatch, and skip a damaged random_states file at INFO level (the resumed run then silently draws other
    noise). Here each part is read as load_state reads it (safetensors; torch.load with weights_only=True for the
    rest, so no pickle can run code) and a failure raises CheckpointError naming the file."""
    from accelerate.utils import load as accelerate_load  # weights_only=True, with accelerate's numpy allowlist

    folder = Path(checkpoint)
    try:
        state = read_state(folder)
        missing = [key for key in _STATE_KEYS if not isinstance(state.get(key), int)]
        if missing:
            raise ValueError(f"no integer {', '.join(missing)}")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE} is damaged ({_first_line(err)}): resume from an older "
                              "checkpoint or delete this one.") from err
    rng = folder / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise CheckpointError(f"{rng} is missing: the checkpoint was written by fewer processes than this run has "
                              "(resume with as many processes as wrote it).")
    parts = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [rng]
    for part in parts:
        try:
            if part.suffix == ".safetensors":
                load_file(str(part))
            else:
                accelerate_load(str(part), map_location="cpu")
        except Exception as err:  # SafetensorError, pickle / zip errors, EOFError, ...: whatever a damaged file gives
            raise CheckpointError(f"{part} is damaged and cannot be read ({type(err).__name__}: {_first_line(err)}): "
                                  "resume from an older checkpoint or delete this one.") from err
    return state


def _first_line(err: BaseException, limit: int = 120) -> str:
    """The first sentence of an error's message, at most `limit` characters (torch's zip errors run to 400)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


RUN_FILE = "run.json"


def read_run_id(output_dir: str | os.PathLike) -> str | None:
    """The id of the run that owns output_dir (written by write_run_id when it started), None for older folders."""
    path = Path(output_dir) / RUN_FILE
    try:
        return str(json.loads(path.read_text())["run_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is damaged ({_first_line(err)}): delete it to resume any checkpoint "
                              "in the folder.") from err


def write_run_id(output_dir: str | os.PathLike, run_id: str) -> None:
    (Path(output_dir) / RUN_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")


def changed_arguments(saved: dict, current: dict) -> list[str]:
    """`name: saved -> current` for every argument of `saved` that `current` gives another value (JSON-normalised)."""
    def same(a, b):
        return json.dumps(a) == json.dumps(b)
    return [f"{name} {value!r} -> {current.get(name)!r}" for name, value in saved.items()
            if not same(value, current.get(name))]


EMA_FILE = "ema.safetensors"


class EMA(nn.Module):
    """Exponential moving average of a model's floating-point parameters (shadow = d shadow + (1 - d) param).
    Checkpointed as EMA_FILE (safetensors) next to accelerate's state; `load` reads it back."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            self.register_buffer(f"shadow_{i}", params[name].detach().clone().float())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            getattr(self, f"shadow_{i}").lerp_(params[name].detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def restart(self, model: nn.Module) -> None:
        """Shadow weights equal to `model`'s (a resumed run whose checkpoint has no EMA)."""
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            getattr(self, f"shadow_{i}").copy_(params[name].detach().float())

    def load(self, checkpoint: Path) -> bool:
        """Restore the shadow weights from a checkpoint's EMA_FILE; False when it has none (then unchanged)."""
        path = Path(checkpoint) / EMA_FILE
        if not path.is_file():
            return False
        self.load_state_dict(load_file(str(path)))
        return True

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            params[name].copy_(getattr(self, f"shadow_{i}").to(params[name].dtype))


MODEL_FILE = "model.safetensors"  # accelerate's save_state: the (only) model's weights
CHECKPOINT_WEIGHTS = ("model", "ema")


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """A step_N / epoch_N folder written by train_zonkey.py (it holds training_state.json)."""
    return (Path(folder) / STATE_FILE).is_file()


def checkpoint_model(checkpoint: str | os.PathLike, weights: str = "model", config=None):
    """The ZonkeyModel of a checkpoint folder step_N / epoch_N, in eval mode: its training weights (`"model"`) or the
    EMA of them (`"ema"`, a run trained with --ema_decay).

    The config is `config` when given (a ZonkeyConfig, or a folder / config.json path: the run's --config_name), else
    the checkpoint's own config.json (every checkpoint carries it since they double as model folders), else the
    finished run's folder above it. The generation config comes with the same folder. Raises ValueError with what to
    fix: no such weights, no config, weights of another config."""
    from ..configuration_zonkey import ZonkeyConfig
    from ..modeling_zonkey import ZonkeyModel

    folder = Path(checkpoint)
    if weights not in CHECKPOINT_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(CHECKPOINT_WEIGHTS)}; got {weights!r}.")
    if not (folder / MODEL_FILE).is_file():
        sharded = any(folder.glob("pytorch_model_fsdp*"))
        raise ValueError(f"{folder} holds no {MODEL_FILE}: " + (
            "an FSDP checkpoint keeps its weights sharded; merge them first (`accelerate merge-weights "
            f"{folder}/pytorch_model_fsdp_0 MERGED`) or use the run's final model folder." if sharded else
            "give a step_N / epoch_N folder written by examples/train_zonkey.py --checkpointing_steps."))
    if weights == "ema" and not (folder / EMA_FILE).is_file():
        raise ValueError(f"{folder} holds no {EMA_FILE}: its run was trained without --ema_decay; load its training "
                         "weights (weights='model').")
    described = next((path for path in (folder, folder.parent) if (path / "config.json").is_file()), None)
    if config is None and described is None:
        raise ValueError(f"no config.json in {folder} or in {folder.parent} (a checkpoint written before checkpoints "
                         "carried their config, of a run still training): give the run's model config "
                         "(its --config_name).")
    if config is None:
        model = ZonkeyModel.from_pretrained(described)
    else:
        model = ZonkeyModel(config if isinstance(config, ZonkeyConfig) else ZonkeyConfig.from_pretrained(config))
    try:
        model.load_state_dict(load_file(str(folder / MODEL_FILE)))
        if weights == "ema":
            ema = EMA(model, decay=0.5)  # the decay is not used: only the shadow weights are read
            ema.load(folder)
            ema.copy_to(model)
    except RuntimeError as err:  # missing / unexpected keys, size mismatches
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
        detail = detail if len(detail) <= 240 else detail[:237] + "..."
        raise ValueError(f"the weights of {folder} do not fit the config "
                         f"{'given' if config is not None else 'in ' + str(described)}: {detail}") from err
    return model.eval()


def model_or_checkpoint(folder: str | os.PathLike, weights: str = "model", config=None):
    """A ZonkeyModel in eval mode from a saved model folder (save_pretrained) or a checkpoint step_N / epoch_N
    (`checkpoint_model`: its training or EMA weights). Raises ValueError naming what the folder lacks; `weights` other
    than "model" and `config` apply to checkpoints only."""
    from ..modeling_zonkey import ZonkeyModel

    path = Path(folder)
    if is_checkpoint(path):
        return checkpoint_model(path, weights, config)
    if not (path / "config.json").is_file():
        raise ValueError(f"{folder} holds neither a saved model (config.json) nor a training checkpoint "
                         f"({STATE_FILE}).")
    if weights != "model" or config is not None:
        raise ValueError(f"the EMA weights and a --config_name apply to a training checkpoint (step_N folder); "
                         f"{folder} is a saved model: leave them out.")
    return ZonkeyModel.from_pretrained(path).eval()
