"""Shared fixtures: the micro preset, the byte tokenizer, and seeded micro models."""

from pathlib import Path

import pytest
import torch

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

MICRO = Path(__file__).resolve().parents[1] / "configuration" / "zonkey-micro.json"


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
