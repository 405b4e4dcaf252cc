"""A training step computes what it computed before a speed refactor: loss terms and gradient norms on a fixed
seed equal the stored reference (tests/loss_reference.py) to float tolerance."""

import json

import pytest
from loss_reference import CASES, REFERENCE, compute

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_terms_and_gradients_equal_the_reference(case):
    expected = json.loads(REFERENCE.read_text())[case]
    measured = compute(case)
    assert set(measured) == set(expected), "the set of loss terms changed: regenerate only if that was meant"
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=2e-4, abs=1e-6), name
    assert any(v > 0 for k, v in measured.items() if k.startswith("grad/level1/decoder"))
