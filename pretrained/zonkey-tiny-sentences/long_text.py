"""Text longer than one top-level window: `generate(max_new_tokens=N)` (N new bytes).

A top-level window is one top-level segment (a few word latents for zonkey-tiny), and nothing above the top level
relates consecutive segments: the model's own long text is a row of top-level segments drawn independently,
stitched at the level below. So, for each sample:
  1. with a prompt, its last top-level segment is continued in one window, for as long as the model says the
     segment goes on (unlike a one-window continuation, which always writes at least one position: past a
     segment's end that position is not trained content and decodes to a repeated non-word);
  2. new top-level segments are drawn from noise, in rounds: a round asks each sample for as many windows as its
     bytes per window so far say it still needs (+ 1), and every window of every sample in the round is
     denoised in one batch;
  3. with a suffix, one infilling window joins the text so far to the suffix: a new segment of gap_segments
     positions whose window runs on into the suffix's first top-level segment (known), as a segment's window runs
     on into the next segments in training; the text before it is complete segments and is not in the window.
The kept positions of a sample's windows form one row of level (top - 1) latents, decoded and stitched as one
document. A round emits every segment's piece but its last, which is carried into the next round's row: the
stitcher's piece of a segment depends on that segment and the next only, so the row decoded round by round
equals the row decoded at once (at the level below the top; a deeper model's lower levels are stitched per
round). The emitted bytes are final, which is what a streamer receives.
chain_windows=True instead writes windows one after another, each a continuation of the text so far.

Window w of sample i draws its noise from window_seed(seed_i, w) and a sample's rounds depend only on its own
windows, so a batch equals its single runs.
"""

import copy
import math
from dataclasses import dataclass

import torch

from .sampling import kept_length

MASK64 = 2**64 - 1
MAX_WINDOWS_PER_BATCH = 1024  # windows denoised together at most (their clamping decodes ~27 latents each)


@dataclass
class Prompt:
    prefix: torch.Tensor  # (P,) byte ids
    suffix: torch.Tensor | None  # (S,) byte ids, infilling only


def generate_long(model, prompts: list[Prompt] | None, config, budgets: list[int], observers) -> list[torch.Tensor]:
    """Each sample's prompt (if any), budgets[i] new bytes (fewer if a window adds nothing), or, before a suffix, at
    least that many (whole segments) and the infilling window's bytes; then its suffix (if any). budgets: one per
    sample (prompts x num_return_sequences). observers: the call's progress bar and streamer (the prompt is already
    put). -> one 1-D tensor of byte ids per sample."""
    repeats = config.num_return_sequences
    one = copy.deepcopy(config)  # the options of one window
    one.max_new_tokens = one.max_length = None
    one.num_return_sequences = 1
    empty = torch.zeros(0, dtype=torch.long, device=model.device)
    samples = [Prompt(empty, None)] * repeats if prompts is None else [p for p in prompts for _ in range(repeats)]
    base = config.seed if config.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    seeds = [base + i for i in range(len(samples))]

    def put(i: int, ids: torch.Tensor) -> None:  # a streamer follows sample 0, the only one
        observers.put(ids)

    if config.chain_windows:
        return _chained(model, samples, seeds, budgets, one, observers, put)
    infilling = samples[0].suffix is not None  # the gap's segments are not cut mid-word: the bridge follows them
    texts = _segments(model, samples, seeds, budgets, one, observers, put, cut=not infilling)
    if samples[0].suffix is None:
        return texts
    return _bridges(model, samples, texts, seeds, one, observers, put)


def window_seed(seed: int, window: int) -> int:
    """The seed of window `window` of a sample seeded `seed`: the seed itself for window 0 (so the first window is
    the one-window sample), else a SplitMix64 hash of both. A hash, not seed + window * stride: torch's CPU
    generator reads only a seed's low 32 bits, so seeds apart by a multiple of 2**32 draw the same noise."""
    if window == 0:
        return seed
    x = (seed * 0x9E3779B97F4A7C15 + window) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _window_seeds(seeds: list[int], samples: list[int], windows: list[int]) -> list[int]:
    return [window_seed(seeds[i], w) for i, w in zip(samples, windows)]


def _segments(model, samples: list[Prompt], seeds: list[int], budgets: list[int], one, observers,
              put, cut: bool = True) -> list[torch.Tensor]:
    """Steps 1 and 2: the prompt, then new top-level segments until budgets[i] new bytes (cut there, or with
    cut=False the last round's pieces kept whole)."""
    texts = [s.prefix for s in samples]
    emitted = [0] * len(samples)  # new bytes so far
    carry: list[torch.Tensor | None] = [None] * len(samples)  # the last kept position, not yet emitted
    if samples[0].prefix.numel():  # the prompts' continuations (window 0)
        spans, _, _ = model._around_windows([Prompt(s.prefix, None) for s in samples], one, observers,
                                            _window_seeds(seeds, range(len(samples)), [0] * len(samples)),
                                            min_new_positions=0)
        new = dict(enumerate(spans))
    else:
        new = _new_segments(model, one, observers, seeds, list(range(len(samples))), [0] * len(samples),
                            [1] * len(samples))
    used = [1] * len(samples)  # windows drawn so far
    prompted = int(samples[0].prefix.numel() > 0)  # window 0 was the prompt's continuation, not from noise
    before = [0] * len(samples)  # bytes known before the first window from noise
    active = list(range(len(samples)))
    while active:
        rows = {i: torch.cat(([] if carry[i] is None else [carry[i]]) + [new[i]]) for i in active}
        stable, whole = _decode_rows(model, {i: row for i, row in rows.items() if len(row)}, one)
        still = []
        for i in active:
            need = budgets[i] - emitted[i]
            if i not in whole:  # nothing kept, nothing carried: the prompt's segment had ended, or the sample ends
                if used[i] == 1 and samples[i].prefix.numel():
                    still.append(i)
                continue
            done = len(stable[i]) >= need or len(whole[i]) >= need
            if not done:
                out = stable[i]
            else:
                out = (stable[i] if len(stable[i]) >= need else whole[i])[:need] if cut else whole[i]
            texts[i], emitted[i] = torch.cat([texts[i], out]), emitted[i] + len(out)
            put(i, out)
            if not done:
                carry[i] = rows[i][-1:]
                still.append(i)
        counts = []
        for i in still:  # windows still needed at the bytes per window from noise so far (+ the carried segment)
            known = emitted[i] + (len(whole[i]) - len(stable[i]) if i in whole else 0)
            if used[i] == prompted:  # only the prompt's continuation so far: measure a window from noise first
                before[i], counts = known, counts + [1]
                continue
            rate = (known - before[i]) / (used[i] - prompted)
            counts.append(math.ceil((budgets[i] - emitted[i]) / rate) + 1 if rate > 0 else 1)
        if still:
            drawn = _new_segments(model, one, observers, seeds, still, [used[i] for i in still], counts)
            for i, count in zip(still, counts):
                used[i] += count
            new = drawn
        active = still
    return texts


def _new_segments(model, one, observers, seeds: list[int], samples: list[int], first: list[int],
                  counts: list[int]) -> dict[int, torch.Tensor]:
    """counts[j] windows from noise for samples[j] (its windows first[j], first[j] + 1, ...), all denoised in one
    batch -> for each sample, the kept top-level positions of its windows, in order (n, d_top)."""
    owners = [i for i, c in zip(samples, counts) for _ in range(c)]
    windows = [f + k for f, c in zip(first, counts) for k in range(c)]
    out = {i: [] for i in samples}
    for start in range(0, len(owners), MAX_WINDOWS_PER_BATCH):  # windows are independent: batches bound memory
        chunk = owners[start : start + MAX_WINDOWS_PER_BATCH]
        _, sequence, existence = model._sample_windows(
            one, len(chunk), None, observers, _window_seeds(seeds, chunk, windows[start : start + len(chunk)]))
        keep = kept_length(existence, one.existence_threshold).tolist()
        for row, i in enumerate(chunk):
            out[i].append(sequence[row, : keep[row]])
    return {i: torch.cat(parts) for i, parts in out.items()}


def _decode_rows(model, rows: dict[int, torch.Tensor], one) -> tuple[dict, dict]:
    """Rows of level (top - 1) latents -> for each, the bytes of every segment's piece but the last (`stable`) and
    of all of them (`whole`); one decoder batch for all rows."""
    if not rows:
        return {}, {}
    below = model.config.num_levels - 2
    if below < 0:  # a one-level model: the kept positions are byte vectors, nothing to stitch
        return ({i: model.nearest_bytes(row[:-1]) for i, row in rows.items()},
                {i: model.nearest_bytes(row) for i, row in rows.items()})
    pieces = model.levels[below].decode_pieces(list(rows.values()), cutoff=one.existence_threshold,
                                               noise_level=model.config.handoff_noise_level)

    def to_bytes(parts: list[torch.Tensor]) -> torch.Tensor:
        if not parts:
            return torch.zeros(0, dtype=torch.long, device=model.device)
        if below == 0:
            return model.nearest_bytes(torch.cat(parts))
        return model.decode_latents([torch.cat(parts)], level=below - 1, cutoff=one.existence_threshold,
                                    estimates=True)[0]

    stable = {i: to_bytes(p[:-1]) for i, p in zip(rows, pieces)}
    whole = {i: (torch.cat([stable[i], to_bytes(p[-1:])]) if below == 0 else to_bytes(p)) for i, p in zip(rows, pieces)}
    return stable, whole


def _bridges(model, samples: list[Prompt], texts: list[torch.Tensor], seeds: list[int], one, observers,
             put) -> list[torch.Tensor]:
    """Step 3: one infilling window between each text so far and its suffix: gap_segments new positions, then the
    suffix's first top-level segment known."""
    prompts = [Prompt(text, sample.suffix) for text, sample in zip(texts, samples)]
    bridge = 2**23  # the bridge's window index: past any window of the segments before it
    spans, _, _ = model._around_windows(prompts, one, observers,
                                        _window_seeds(seeds, range(len(samples)), [bridge] * len(samples)),
                                        left_context=False)
    top = model.config.num_levels - 1
    out = []
    for i, (text, span) in enumerate(zip(texts, spans)):
        gap = model._decode_span(span, top, one.existence_threshold)
        put(i, torch.cat([gap, samples[i].suffix]))
        out.append(torch.cat([text, gap, samples[i].suffix]))
    return out


def _chained(model, samples: list[Prompt], seeds: list[int], budgets: list[int], one, observers,
             put) -> list[torch.Tensor]:
    """chain_windows: windows one after another, each a continuation of the text so far (its last top-level
    segment known, by replacement); samples that are done, or whose window added nothing, leave the batch."""
    texts, active, window = [s.prefix for s in samples], list(range(len(samples))), 0
    while active:
        window_seeds = _window_seeds(seeds, active, [window] * len(active))
        if window == 0 and not samples[0].prefix.numel():
            added = model._generate_from_noise(one, observers, window_seeds)[0]
        else:
            outputs = model._generate_around([Prompt(texts[i], None) for i in active], one, observers,
                                             window_seeds)[0]
            added = [output[len(texts[i]):] for output, i in zip(outputs, active)]
        for i, new in zip(active, added):
            new = new[: max(0, len(samples[i].prefix) + budgets[i] - len(texts[i]))]  # the last window: cut
            texts[i] = torch.cat([texts[i], new])
            put(i, new)
        active = [i for i, new in zip(active, added)
                  if len(new) > 0 and len(texts[i]) - len(samples[i].prefix) < budgets[i]]
        window += 1
    return texts
