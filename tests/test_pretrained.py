"""The pretrained checkpoint shipped in the repository: it loads, its card tells the truth, the README's example holds."""

import json
import re
from pathlib import Path

import pytest
from transformers import AutoModel, AutoTokenizer

from modeling_zonkey import ZonkeyGenerationConfig, ZonkeyModel
from modeling_zonkey.data import load_text_datasets
from modeling_zonkey.evaluation import held_out_documents, reconstruction_metrics, segmentation_metrics
from modeling_zonkey.hub import files_to_push
from modeling_zonkey.inspection import mark_boundaries, segment_text

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained" / "zonkey-tiny"
README_SENTENCE = "The river flows through the old town and into the sea."

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pretrained():
    model = AutoModel.from_pretrained(PRETRAINED)
    return model, AutoTokenizer.from_pretrained(PRETRAINED)


def test_the_folder_is_small_complete_and_safetensors():
    files = [PRETRAINED / name for name in files_to_push(PRETRAINED)]
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    assert (PRETRAINED / "model.safetensors").is_file() and not list(PRETRAINED.glob("*.bin"))
    everything = [p for p in PRETRAINED.rglob("*") if p.is_file()]
    assert sorted(everything) == sorted(files), "only shareable files belong in the shipped folder"


def test_its_remote_code_is_the_packages():
    """Users with trust_remote_code run the folder's copies: they must be the package's current files."""
    package = ROOT / "modeling_zonkey"
    stale = [f.name for f in PRETRAINED.glob("*.py") if f.read_bytes() != (package / f.name).read_bytes()]
    assert not stale, (f"{stale} differ from modeling_zonkey/: re-save the checkpoint (AutoModel.from_pretrained(folder)"
                       ".save_pretrained(folder)) so that its remote code is current")


def test_it_loads_segments_and_generates(pretrained):
    model, tokenizer = pretrained
    assert type(model) is ZonkeyModel and not model.training
    assert type(model.generation_config) is ZonkeyGenerationConfig
    segmentation = segment_text(model, tokenizer, README_SENTENCE)
    assert len(segmentation.starts[0]) >= 6  # it splits a sentence into word-like pieces
    ids = model.generate(num_return_sequences=2, seed=0)
    assert (ids != 256).sum() > 10


def test_the_readme_example_is_what_the_model_prints(pretrained):
    model, tokenizer = pretrained
    segmentation = segment_text(model, tokenizer, README_SENTENCE)
    marked = mark_boundaries(segmentation.data, segmentation.starts)
    assert marked in (ROOT / "README.md").read_text(), marked


def card_number(card: str, pattern: str) -> list[float]:
    match = re.search(pattern, card)
    assert match, pattern
    return [float(x.rstrip("%")) for x in match.groups()]


def test_the_card_numbers_match_a_fresh_evaluation(pretrained):
    model, tokenizer = pretrained
    card = (PRETRAINED / "README.md").read_text()
    recorded = json.loads((PRETRAINED / "evaluation" / "evaluation.json").read_text())
    documents = held_out_documents(load_text_datasets()["validation"]["text"], model.config.document_length[0],
                                   recorded["documents"])
    assert sum(len(d) for d in documents) == recorded["bytes"], "not the same held-out text as the card"
    fresh = segmentation_metrics(model, documents)
    precision, recall, f1 = card_number(card, r"\| 0 \| word starts \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")
    assert abs(precision - fresh["level0"]["precision"]) < 0.01
    assert abs(recall - fresh["level0"]["recall"]) < 0.01
    assert abs(f1 - fresh["level0"]["f1"]) < 0.01
    clean = reconstruction_metrics(model, documents, (0.0,))["t=0"]
    for level in range(model.config.num_levels):
        (accuracy,) = card_number(card, rf"\| 0 \| {level} \| ([\d.]+)% \|")
        assert abs(accuracy / 100 - clean[f"level{level}"]["byte_accuracy"]) < 0.01, level
