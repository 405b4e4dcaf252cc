"""Shared fixtures: the micro preset, the byte tokenizer, seeded micro models, a saved micro folder, a training-mode
level 0 with its segments and latents, and the training script imported in-process."""

import contextlib
import importlib.util
import io
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer
from modeling_zonkey.level import LevelTargets, SegmentBatch
from modeling_zonkey.segment_splitter import build_segments
from modeling_zonkey.sphere import to_sphere

MICRO = Path(__file__).resolve().parents[1] / "configuration" / "zonkey-micro.json"
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_zonkey.py"


@pytest.fixture(scope="module")
def single_thread():
    """Use with `pytestmark = pytest.mark.usefixtures("single_thread")`: the micro model's tensors are tiny, so
    intra-op threads only add OpenMP spin-waiting (on a busy 2-core machine one training step took seconds
    instead of ~0.1 s). Module-scoped and restored afterwards, so other test files keep their numerics."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def micro_config() -> ZonkeyConfig:
    return ZonkeyConfig.from_pretrained(str(MICRO))


@pytest.fixture(scope="session")
def tokenizer() -> ZonkeyTokenizer:
    return ZonkeyTokenizer()


@pytest.fixture(scope="session")
def make_model(micro_config):
    """make_model(seed, perturb) -> a fresh micro ZonkeyModel in eval mode.

    perturb adds seeded noise to EVERY parameter, so LayerNorm biases, constants such as the stitcher's
    alpha / rho and zero-initialised biases are no longer at their init values: a weight that is not
    saved, not loaded or re-initialised on load then shows up as a numerical difference.
    """

    def build(seed: int = 0, perturb: bool = True) -> ZonkeyModel:
        torch.manual_seed(seed)
        model = ZonkeyModel(micro_config)
        if perturb:
            generator = torch.Generator().manual_seed(seed + 1000)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        return model.eval()

    return build


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory, make_model, tokenizer):
    """A micro model and tokenizer saved with save_pretrained (a folder to fine-tune)."""
    folder = tmp_path_factory.mktemp("micro")
    make_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def level0_segments(model: ZonkeyModel, detach: bool = False):
    """Level 0 of `model` on three 40-byte rows of random lowercase letters (drawn from the global RNG): the
    SegmentBatch of every segment with byte targets, the segments' latents and the byte vocabulary on the sphere;
    with `detach`, latents, windows, targets and vocabulary without their graph. -> (level, sub, latents, vocabulary)"""
    ids = torch.randint(97, 123, (3, 40))
    valid = torch.ones(3, 40, dtype=torch.bool)
    x = model.embed_bytes(ids)
    level = model.levels[0]
    split = level.splitter(x, valid)
    segments = build_segments(split.bos_probs, split.boundaries, valid, level.window_length, split.log_not_bos)
    windows = segments.gather(x)
    latents = level.compressor(windows, segments.existence).latents
    vocabulary = to_sphere(model.byte_embeddings.weight[:256])
    if detach:
        latents, windows, x, vocabulary = latents.detach(), windows.detach(), x.detach(), vocabulary.detach()
    sub = SegmentBatch.take(segments, windows, torch.arange(len(latents)), LevelTargets(x, ids, vocabulary), valid)
    return level, sub, latents, vocabulary


@pytest.fixture(scope="module")
def training_level(micro_config):
    """A micro model in training mode (seed 0), its level 0 on three 40-byte rows of random lowercase letters, the
    SegmentBatch of every segment with byte targets, and the segments' latents (with their graph): the model,
    level, sub, latents of the level's loss and decoder-pass tests."""
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config).train()
    level, sub, latents, _ = level0_segments(model)
    return model, level, sub, latents


def import_script(path: Path, name: str):
    """The Python file at `path` (an example script, not a package module) imported as module `name`, with its folder
    first on sys.path while it loads, as when Python runs it (so it finds its sibling modules, e.g. common.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(path).parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(Path(path).parent))
    return module


@contextlib.contextmanager
def script_in_process(tmp_path: Path):
    """examples/train_zonkey.py imported as a module, for running its main() in this process (no interpreter start
    and imports per run, ~5 s each here); the caller's RNG, threads, deterministic-algorithms switch, environment,
    accelerate state and transformers / datasets verbosity are restored afterwards. Offline, caches under tmp_path,
    one thread unless the test changes OMP_NUM_THREADS, as the subprocess runs."""
    import transformers
    from accelerate.state import AcceleratorState, GradientState

    verbosity = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    AcceleratorState._reset_state(True)  # an Accelerator (or Trainer) of an earlier test must not configure this one
    GradientState._reset_state()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
        for key in [k for k in os.environ if k.startswith("ACCELERATE_")]:
            patch.delenv(key)
        patch.setenv("OMP_NUM_THREADS", "1")  # --threads auto then keeps one thread, as the subprocess runs do
        torch.set_num_threads(1)
        module = import_script(SCRIPT, "train_zonkey_under_test")
        try:
            yield module
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            torch.set_num_threads(states[3])
            torch.use_deterministic_algorithms(deterministic)
            transformers.utils.logging.set_verbosity(verbosity[0])
            datasets.utils.logging.set_verbosity(verbosity[1])


@pytest.fixture
def in_process(tmp_path, caplog):
    """The training script imported in-process (script_in_process); its INFO log lines are in `caplog.text`."""
    caplog.set_level(logging.INFO)
    with script_in_process(tmp_path) as module:
        yield module


@dataclass
class Finished:
    """What a run of the training script left, as subprocess.run reports it: stderr holds its log lines too."""

    returncode: int
    stdout: str
    stderr: str


def run_main(module, args: list[str]) -> Finished:
    """main(args) of a script_in_process module, its output captured (prints, log lines, progress bars)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            module.main(args)
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)  # the next run builds its own Accelerator
        GradientState._reset_state()
    return Finished(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory):
    """One run of examples/train_zonkey.py under `accelerate launch` with 2 CPU processes (gloo,
    configuration/accelerate-cpu-ddp-2.yaml): the micro preset, 4 optimizer steps of batch 2 per process,
    checkpoints at steps 2 and 4, --deterministic. Shared by the data-sharing test (test_training.py) and the
    faults' reference run (test_training_faults.py): each launch costs ~10 s here."""
    from test_training import train_args, write_corpus
    from test_training_faults import ARGS, launch

    tmp = tmp_path_factory.mktemp("two-processes")
    train, validation, _ = write_corpus(tmp / "data")
    result, _ = launch(SCRIPT, train_args(train, validation, tmp / "A", *ARGS), tmp)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"tmp": tmp, "train": train, "validation": validation, "A": tmp / "A", "result": result}

