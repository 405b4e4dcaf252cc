"""generate(streamer=...): what a transformers streamer receives in every mode (the returned sample, by put),
the drafts of a streamer with put_draft (TextDiffusionStreamer), and one sample per streamer."""

import re

import pytest
import torch
from test_generation import FAST

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)  # the micro model of test_generation.py


class Collector:
    """A streamer: records every put() and whether end() was called."""

    def __init__(self):
        self.parts, self.ended = [], False

    def put(self, value):
        self.parts.append(value.reshape(-1).clone())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("mode", ["long", "long_prompt", "long_infill", "long_chained", "window", "window_prompt",
                                  "reconstruct"])
def test_a_streamer_receives_the_returned_sample(model, tokenizer, mode):
    options = dict(seed=7, **FAST)
    if mode.startswith("long"):
        options["max_new_tokens"] = 120
    if mode.endswith(("prompt", "infill")) or mode == "reconstruct":
        options.update(tokenizer(["The river flows"], return_tensors="pt"))
    if mode == "long_infill":
        options["suffix_ids"] = tokenizer([" to the sea."], return_tensors="pt")["input_ids"]
    options["chain_windows"] = mode == "long_chained"
    if mode == "reconstruct":
        options["noise_level"] = 0.5
    streamer = Collector()
    out = model.generate(streamer=streamer, **options)[0]
    assert streamer.ended and torch.equal(torch.cat(streamer.parts), out[out != 256])
    if mode in ("long", "long_chained"):  # one put per round or window: the text arrives as it is written
        assert sum(len(part) > 0 for part in streamer.parts) >= 2


class DraftCollector(Collector):
    """A streamer with put_draft, as transformers' TextDiffusionStreamer: records the drafts too."""

    def __init__(self):
        super().__init__()
        self.drafts = []

    def put_draft(self, value):
        self.drafts.append(value.reshape(-1).clone())


@pytest.mark.parametrize("mode", ["window", "window_prompt", "infill", "long"])
def test_a_draft_streamer_sees_every_denoising_step(model, tokenizer, mode):
    """Each denoising step sends the window's text as that step's estimate decodes it (a continuation's or gap's
    generated positions only); the final text still arrives by put, the prompt first."""
    options = dict(seed=3, **FAST)
    if mode != "window" and mode != "long":
        options.update(tokenizer(["The river flows "], return_tensors="pt"))
    if mode == "infill":
        options["suffix_ids"] = tokenizer([" to the sea."], return_tensors="pt")["input_ids"]
    if mode == "long":
        options["max_new_tokens"] = 60
    streamer = DraftCollector()
    out = model.generate(streamer=streamer, **options)[0]
    out = out[out != 256]
    assert torch.equal(torch.cat(streamer.parts), out)
    if mode == "long":  # one draft per step of every round (rounds are FAST["num_steps"] steps each)
        assert len(streamer.drafts) >= 2 * FAST["num_steps"] and len(streamer.drafts) % FAST["num_steps"] == 0
    else:
        assert len(streamer.drafts) == FAST["num_steps"]
    assert all(d.dtype == torch.long and len(d) and int(d.max()) < 256 for d in streamer.drafts)
    if mode == "window_prompt":
        assert torch.equal(streamer.parts[0], options["input_ids"][0])  # the prompt comes before the drafts
    no_drafts = Collector()
    assert torch.equal(model.generate(streamer=no_drafts, **options)[0][: len(out)], out)  # drafts change nothing


def test_text_diffusion_streamer_prints_the_final_text(model, tokenizer, capsys):
    from transformers import TextDiffusionStreamer

    out = model.generate(streamer=TextDiffusionStreamer(tokenizer, skip_special_tokens=True), seed=2,
                         max_new_tokens=30, **FAST)
    printed = capsys.readouterr().out
    drafts = re.findall("\0337\033\\[33m(.*?)\033\\[0m", printed, flags=re.S)  # shown, then cleared
    assert len(drafts) >= FAST["num_steps"] and len(drafts) % FAST["num_steps"] == 0
    final = re.sub("\0337\033\\[33m.*?\033\\[0m|\0338\033\\[J", "", printed, flags=re.S)
    assert final == tokenizer.decode(out[0], skip_special_tokens=True) + "\n"


def test_text_streamer_prints_the_generated_text(model, tokenizer, capsys):
    from transformers import TextStreamer

    prompt = tokenizer(["The river"], return_tensors="pt")
    out = model.generate(**prompt, streamer=TextStreamer(tokenizer), seed=1, max_new_tokens=30, **FAST)
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == tokenizer.decode(out[0], skip_special_tokens=True).rstrip("\n")


def test_a_streamer_takes_one_sample(model):
    with pytest.raises(ValueError, match="streamer receives one sample"):
        model.generate(num_return_sequences=2, streamer=Collector(), **FAST)
