"""examples/experiments/handoff_error.py: level 0 handed variants of its latents (level 1's estimates, a random error
of the same cosine, ...), scored against the evaluation's own reconstruction numbers."""

from pathlib import Path

import pytest
import torch
from conftest import import_script

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.hierarchy import hierarchy_diagnosis
from modeling_zonkey.evaluation.metrics import byte_accuracy
from modeling_zonkey.evaluation.suite import document_batches

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "handoff_error.py"
PHRASES = Path(__file__).resolve().parents[1] / "pretrained" / "zonkey-tiny-phrases"
pytestmark = pytest.mark.usefixtures("single_thread")
DOCUMENTS = [
    b"The river flows north through the old city, past the cathedral and the market square, before it turns west "
    b"toward the hills where the first settlers built their farms in the thirteenth century.",
    b"In 1998 the company moved its headquarters to a former textile mill; by then it employed about four hundred "
    b"people, most of them engineers, and sold its instruments in more than thirty countries.",
    b"She studied chemistry at the university, wrote a thesis on the structure of crystals, and later taught at a "
    b"small college in the north, where a building now carries her name.",
]


@pytest.fixture(scope="module")
def script():
    return import_script(SCRIPT, "handoff_error")


def test_turn_to_cosine_gives_each_latent_its_own_cosine_on_its_sphere():
    from modeling_zonkey.evaluation.hierarchy import turn_to_cosine
    from modeling_zonkey.sphere import expected_norm

    generator = torch.Generator().manual_seed(0)
    true = torch.randn(5, 32, generator=generator) * 3
    cosine = torch.tensor([1.0, 0.99, 0.9, 0.5, 0.0])
    turned = turn_to_cosine(true, cosine, generator)
    assert torch.allclose(torch.nn.functional.cosine_similarity(turned, true, dim=-1), cosine, atol=1e-5)
    assert torch.allclose(turned.norm(dim=-1), expected_norm(32) * torch.ones(5), atol=1e-4)


def test_true_latents_and_level_1s_estimates_score_as_the_evaluation_does(script):
    model = ZonkeyModel.from_pretrained(PHRASES).eval()  # a trained model: the scores are far from 0 and from 1
    result = script.handoff_error(model, DOCUMENTS, batch_size=2)
    variants = result["variants"]
    (_, ids, mask), = document_batches(DOCUMENTS, 3, model.device)
    level0 = byte_accuracy(model.reconstruct(ids, mask, from_level=0), ids, mask)
    assert variants["true"]["byte_accuracy"] == pytest.approx(level0[0] / level0[1])
    batches = [(ids, mask) for _, ids, mask in document_batches(DOCUMENTS, 2, model.device)]
    top = hierarchy_diagnosis(model, batches, cosines=(1.0,), handoff_levels=(0.0,))["level1"]["top"]["t=0"]
    assert variants["level 1's estimates"]["byte_accuracy"] == pytest.approx(top["oracle"]["byte_accuracy"])
    assert result["mismatched_rows"] == 0 and result["latents"] > 3
    assert 0.5 < variants["level 1's estimates"]["byte_accuracy"] < variants["true"]["byte_accuracy"] <= 1.0
    assert set(variants) == {"true", "level 1's estimates", "random error, same cosine", "half the error",
                             *(f"sub-vector {j} from the truth" for j in range(model.config.num_cls_vectors[0]))}
    assert -1.0 <= result["cosine"]["min"] <= result["cosine"]["p05"] <= result["cosine"]["mean"] <= 1.0
