"""generate(max_new_tokens=N): text longer than one top-level window (modeling_zonkey/long_text.py): the length
reached, prompts kept verbatim, a batch equal to its single runs, infills, and what it refuses."""

import pytest
import torch
from test_generation import FAST, lengths
from test_streaming import Collector

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(seed=3)  # the micro model of test_generation.py


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


@pytest.mark.parametrize("chain_windows", [False, True])
def test_max_new_tokens_writes_windows_to_the_length(model, tokenizer, chain_windows):
    """One window of the micro model holds a few bytes; max_new_tokens keeps writing windows until each sample has
    that many, and a batch equals its single runs (window w of sample i is seeded window_seed(seed + i, w))."""
    options = dict(chain_windows=chain_windows, **FAST)
    one_window = lengths(model.generate(num_return_sequences=3, seed=7, **FAST))
    batch = model.generate(num_return_sequences=3, seed=7, max_new_tokens=60, **options)
    assert max(one_window) < 60 and lengths(batch) == [60, 60, 60]
    for i in range(3):
        single = model.generate(seed=7 + i, max_new_tokens=60, **options)
        assert torch.equal(single[0], batch[i])
    assert model.generate(seed=7, max_new_tokens=5, **options).shape == (1, 5)
    # the first window is the one-window sample: the same bytes up to its last level-0 segment, which the row
    # stitches to the next window's first instead of ending it where its existence falls
    first = model.generate(seed=7, **FAST)[0]
    assert shared_prefix(batch[0], first[first != 256]) >= len(first[first != 256]) - model.config.window_length[0]


@pytest.mark.parametrize("chain_windows", [False, True])
def test_max_new_tokens_continues_a_prompt_verbatim_across_windows(model, tokenizer, chain_windows):
    prompt = "The river flows through the old town"
    inputs = tokenizer([prompt, "A"], return_tensors="pt", padding=True)
    out = model.generate(**inputs, seed=2, max_new_tokens=50, chain_windows=chain_windows, **FAST)
    decoded = [row[row != 256] for row in out]
    assert [len(row) for row in decoded] == [len(prompt) + 50, 1 + 50]
    assert bytes(decoded[0][: len(prompt)].tolist()).decode() == prompt and decoded[1][0] == ord("A")
    for i, text in enumerate([prompt, "A"]):
        single = model.generate(**tokenizer([text], return_tensors="pt"), seed=2 + i, max_new_tokens=50,
                                chain_windows=chain_windows, **FAST)[0]
        assert torch.equal(single, decoded[i])


def test_windows_denoised_in_smaller_batches_give_the_same_text(model, monkeypatch):
    """Long text's windows are independent: splitting a round into several denoising batches changes nothing."""
    from modeling_zonkey import long_text

    whole = model.generate(num_return_sequences=2, seed=4, max_new_tokens=60, **FAST)
    monkeypatch.setattr(long_text, "MAX_WINDOWS_PER_BATCH", 3)
    torch.testing.assert_close(model.generate(num_return_sequences=2, seed=4, max_new_tokens=60, **FAST), whole,
                               rtol=0, atol=0)


def test_every_window_draws_its_own_noise():
    """torch's CPU generator reads a seed's low 32 bits only (seeds 5 and 5 + 2**40 draw the same numbers), so window
    seeds are hashed: every (sample, window) pair gets its own low 32 bits, and window 0 keeps the sample's seed."""
    from modeling_zonkey.long_text import window_seed

    seeds = [window_seed(seed, window) for seed in range(8) for window in range(100)]
    assert len({s % 2**32 for s in seeds}) == len(seeds)
    assert all(window_seed(seed, 0) == seed for seed in range(8)) and all(0 <= s < 2**64 for s in seeds)
    first, second = (torch.randn(4, generator=torch.Generator().manual_seed(window_seed(5, w))) for w in (1, 2))
    assert not torch.equal(first, second)


def test_long_text_decoded_round_by_round_equals_one_decode(model):
    """The rounds of max_new_tokens emit every segment's piece but the last and carry that one into the next row:
    the pieces of a row decoded in two parts overlapping by one segment are the pieces of the whole row."""
    level = model.levels[0]
    torch.manual_seed(0)
    latents = torch.nn.functional.normalize(torch.randn(7, model.config.latent_size(0)), dim=-1) * 8
    whole, head, tail = level.decode_pieces([latents, latents[:4], latents[3:]])
    parts = head[:3] + tail
    assert len(whole) == len(parts) == 7
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b)


def test_max_new_tokens_writes_an_infill(model, tokenizer):
    """Infilling with max_new_tokens: the prompt's continuation and new segments up to at least the length (whole
    segments: the same bytes as the continuation alone, which is cut at the length, and possibly a few more), then
    one infilling window of gap_segments positions, then the suffix verbatim."""
    prefix, suffix = tokenizer(["The river"], return_tensors="pt"), tokenizer([" to the sea."], return_tensors="pt")
    filled = model.generate(**prefix, suffix_ids=suffix["input_ids"], seed=3, max_new_tokens=40, gap_segments=2,
                            **FAST)[0]
    continued = model.generate(**prefix, seed=3, max_new_tokens=40, **FAST)[0]
    filled = filled[filled != 256]
    assert torch.equal(filled[: len(continued)], continued)
    assert len(filled) > len(continued) + len(" to the sea.")
    streamer = Collector()
    model.generate(**prefix, suffix_ids=suffix["input_ids"], seed=3, max_new_tokens=40, gap_segments=2,
                   streamer=streamer, **FAST)
    assert torch.equal(torch.cat(streamer.parts), filled) and all(len(part) for part in streamer.parts)
    assert bytes(filled[-len(" to the sea.") :].tolist()) == b" to the sea."


def test_long_text_refuses_what_it_cannot_do(model, tokenizer):
    inputs = tokenizer(["The river"], return_tensors="pt")
    with pytest.raises(ValueError, match="chain_windows continues the text window by window"):
        model.generate(**inputs, suffix_ids=inputs["input_ids"], max_new_tokens=10, chain_windows=True, **FAST)
    with pytest.raises(ValueError, match="chain_windows must be True or False"):
        model.generate(max_new_tokens=10, chain_windows="yes", **FAST)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        model.generate(max_new_tokens=0, **FAST)
