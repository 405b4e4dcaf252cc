"""The pretrained checkpoints shipped in the repository: they load, their cards tell the truth, the README's examples
hold."""

import json
import re
from pathlib import Path

import pytest
from transformers import AutoModel, AutoTokenizer

from modeling_zonkey import ZonkeyGenerationConfig, ZonkeyModel
from modeling_zonkey.evaluation.inspection import mark_boundaries, segment_text
from modeling_zonkey.evaluation.suite import held_out_documents, reconstruction_metrics, segmentation_metrics
from modeling_zonkey.hub.push import files_to_push
from modeling_zonkey.training.data import load_text_datasets

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "pretrained" / name for name in ("zonkey-tiny", "zonkey-tiny-sentences", "zonkey-tiny-phrases")]
PARAGRAPH = ("The river flows through the old town and into the sea. The town was founded in 1850 by farmers from the "
             "north. Today it is known for its bridges, its market and a small museum of local history. It has a "
             "population of about 12,000.")
EXAMPLES = {  # the held-out text each checkpoint's example segments, and the page that shows what it prints
    "zonkey-tiny": ("The river flows through the old town and into the sea.", ROOT / "README.md"),
    "zonkey-tiny-sentences": (PARAGRAPH, ROOT / "docs" / "research" / "results.md"),
    "zonkey-tiny-phrases": (PARAGRAPH, ROOT / "README.md"),
}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda path: path.name)
def folder(request):
    return request.param


@pytest.fixture(scope="module")
def pretrained(folder):
    model = AutoModel.from_pretrained(folder)
    return model, AutoTokenizer.from_pretrained(folder)


def test_the_folder_is_small_complete_and_safetensors(folder):
    files = [folder / name for name in files_to_push(folder)]
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    everything = [p for p in folder.rglob("*") if p.is_file()]
    assert sorted(everything) == sorted(files), "only shareable files belong in the shipped folder"


def test_its_remote_code_is_the_packages(folder):
    """Users with trust_remote_code run the folder's copies: they must be the package's current files."""
    package = ROOT / "modeling_zonkey"
    stale = [f.name for f in folder.glob("*.py") if f.read_bytes() != (package / f.name).read_bytes()]
    assert not stale, (f"{stale} differ from modeling_zonkey/: re-save the checkpoint "
                       "(AutoModel.from_pretrained(folder).save_pretrained(folder)) so that its remote code is current")


def test_it_loads_segments_and_generates(pretrained, folder):
    model, tokenizer = pretrained
    assert type(model) is ZonkeyModel and not model.training
    assert type(model.generation_config) is ZonkeyGenerationConfig
    segmentation = segment_text(model, tokenizer, EXAMPLES[folder.name][0])
    assert len(segmentation.starts[0]) >= 6  # it splits a sentence into word-like pieces
    ids = model.generate(num_return_sequences=2, seed=0)
    assert (ids != 256).sum() > 10


def test_the_documented_example_is_what_the_model_prints(pretrained, folder):
    model, tokenizer = pretrained
    text, page = EXAMPLES[folder.name]
    segmentation = segment_text(model, tokenizer, text)
    marked = mark_boundaries(segmentation.data, segmentation.starts)
    assert marked in page.read_text(), (page, marked)


def card_number(card: str, pattern: str) -> list[float]:
    match = re.search(pattern, card)
    assert match, pattern
    return [float(x.rstrip("%")) for x in match.groups()]


def test_the_card_numbers_match_a_fresh_evaluation(pretrained, folder):
    model, tokenizer = pretrained
    card = (folder / "README.md").read_text()
    recorded = json.loads((folder / "evaluation" / "evaluation.json").read_text())
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
