"""Shared fixtures: the micro preset, the byte tokenizer, seeded micro models, a saved micro folder, and the
training script imported in-process."""

import importlib.util
import logging
import os
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

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


@pytest.fixture
def in_process(monkeypatch, tmp_path, caplog):
    """examples/train_zonkey.py imported as a module (its main() run in-process); the caller's RNG, threads,
    deterministic-algorithms switch, accelerate state and transformers / datasets verbosity are restored afterwards.
    The script's INFO log lines are in `caplog.text`."""
    import transformers
    from accelerate.state import AcceleratorState, GradientState

    caplog.set_level(logging.INFO)
    verbosity = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    for key in [k for k in os.environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --threads auto then keeps one thread, as the subprocess runs do
    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train_zonkey_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    torch.set_num_threads(states[3])
    torch.use_deterministic_algorithms(deterministic)
    transformers.utils.logging.set_verbosity(verbosity[0])
    datasets.utils.logging.set_verbosity(verbosity[1])
