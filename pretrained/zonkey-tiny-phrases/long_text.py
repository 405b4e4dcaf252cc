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
windows, so a batch equals its single runs. Each sample's progress is a `LongSample`; the window operations come from
windows.py (`TopWindows`), shared with the one-window modes of generation_zonkey.
"""

import math
from dataclasses import dataclass

import torch

from .windows import Prompt, TopWindows

MASK64 = 2**64 - 1
MAX_WINDOWS_PER_BATCH = 1024  # windows denoised together at most (their clamping decodes ~27 latents each)
BRIDGE_WINDOW = 2**23  # the window index of an infill's bridging window: above any index a sample's segments reach


@dataclass
class LongSample:
    """One sample of a long-text call, and where its rounds stand."""

    prompt: Prompt
    seed: int
    budget: int  # the new bytes it asks for
    text: torch.Tensor  # (n,) its bytes so far, the prompt's first
    emitted: int = 0  # new bytes in text
    carry: torch.Tensor | None = None  # (1, d_top) its last kept position, decoded again with the next round's row
    windows: int = 0  # windows drawn so far (window 0 continues the prompt, if there is one)
    bytes_before_noise: int = 0  # new bytes known when its first window from noise was drawn

    @property
    def prompted(self) -> bool:
        return len(self.prompt.prefix) > 0

    @property
    def windows_from_noise(self) -> int:
        return self.windows - 1 if self.prompted else self.windows

    def windows_to_draw(self, known: int) -> int:
        """How many windows from noise the next round draws, given the new bytes `known` so far (emitted or
        decoded and carried): as many as its bytes per window from noise say it still needs, plus one; right after
        a prompt's continuation, one, to measure."""
        if self.windows_from_noise == 0:
            self.bytes_before_noise = known
            return 1
        rate = (known - self.bytes_before_noise) / self.windows_from_noise
        return math.ceil((self.budget - self.emitted) / rate) + 1 if rate > 0 else 1


def generate_long(windows: TopWindows, prompts: list[Prompt] | None, repeats: int,
                  budgets: list[int]) -> list[torch.Tensor]:
    """Each sample's prompt (if any), budgets[i] new bytes (fewer if a window adds nothing), or, before a suffix, at
    least that many (whole segments) and the infilling window's bytes; then its suffix (if any). Samples are the
    prompts x repeats (or `repeats` samples without prompts), budgets one per sample; the call's streamer (one
    sample) has received the prompt already. -> one (n_i,) tensor of byte ids per sample."""
    empty = torch.zeros(0, dtype=torch.long, device=windows.model.device)
    prompts = [Prompt(empty)] * repeats if prompts is None else [p for p in prompts for _ in range(repeats)]
    samples = [LongSample(prompt, seed, budget, prompt.prefix)
               for prompt, seed, budget in zip(prompts, windows.seeds(len(prompts)), budgets)]
    if windows.config.chain_windows:
        _chained(windows, samples)
        return [sample.text for sample in samples]
    infilling = prompts[0].suffix is not None  # the gap's segments are not cut mid-word: the bridge follows them
    _segments(windows, samples, cut=not infilling)
    if infilling:
        _bridges(windows, samples)
    return [sample.text for sample in samples]


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


def _emit(windows: TopWindows, sample: LongSample, ids: torch.Tensor) -> None:
    """Final bytes of a sample: appended to its text and sent to the streamer (a call with one follows one sample)."""
    sample.text, sample.emitted = torch.cat([sample.text, ids]), sample.emitted + len(ids)
    windows.observers.put(ids)


def _segments(windows: TopWindows, samples: list[LongSample], cut: bool = True) -> None:
    """Steps 1 and 2: the prompt's continuation, then new top-level segments, until each sample has its budget of
    new bytes (cut there, or with cut=False the last round's pieces kept whole)."""
    if samples[0].prompted:  # window 0: the prompts' continuations
        spans, _, _ = windows.around([Prompt(s.prompt.prefix) for s in samples],
                                     seeds=[window_seed(s.seed, 0) for s in samples], min_new_positions=0)
        new = dict(enumerate(spans))
        for sample in samples:
            sample.windows = 1
    else:
        new = _new_segments(windows, samples, list(range(len(samples))), [1] * len(samples))
    active = list(range(len(samples)))
    while active:
        rows = {i: torch.cat(([] if samples[i].carry is None else [samples[i].carry]) + [new[i]]) for i in active}
        stable, whole = _decode_rows(windows, {i: row for i, row in rows.items() if len(row)})
        still = []
        for i in active:
            sample = samples[i]
            if i not in whole:  # nothing kept, nothing carried: the prompt's segment had ended, or the sample ends
                if sample.prompted and sample.windows == 1:
                    still.append(i)
                continue
            need = sample.budget - sample.emitted
            finished = len(stable[i]) >= need or len(whole[i]) >= need
            if not finished:
                out = stable[i]
            else:
                out = (stable[i] if len(stable[i]) >= need else whole[i])[:need] if cut else whole[i]
            _emit(windows, sample, out)
            if not finished:
                sample.carry = rows[i][-1:]
                still.append(i)
        counts = []
        for i in still:  # the new bytes known so far: emitted, and decoded in the carried segment
            carried = len(whole[i]) - len(stable[i]) if i in whole else 0
            counts.append(samples[i].windows_to_draw(samples[i].emitted + carried))
        if still:
            new = _new_segments(windows, samples, still, counts)
        active = still


def _new_segments(windows: TopWindows, samples: list[LongSample], which: list[int],
                  counts: list[int]) -> dict[int, torch.Tensor]:
    """counts[j] windows from noise for sample which[j] (its next window indices), all denoised in batches of at
    most MAX_WINDOWS_PER_BATCH -> for each, the kept top-level positions of its new windows, in order (n, d_top)."""
    owners = [i for i, c in zip(which, counts) for _ in range(c)]
    indices = [samples[i].windows + k for i, c in zip(which, counts) for k in range(c)]
    for i, count in zip(which, counts):
        samples[i].windows += count
    out = {i: [] for i in which}
    for start in range(0, len(owners), MAX_WINDOWS_PER_BATCH):  # windows are independent: batches bound memory
        chunk = owners[start : start + MAX_WINDOWS_PER_BATCH]
        seeds = [window_seed(samples[i].seed, w) for i, w in zip(chunk, indices[start : start + len(chunk)])]
        _, sequence, existence = windows.sample(len(chunk), None, seeds)
        for i, kept in zip(chunk, windows.kept(sequence, existence)):
            out[i].append(kept)
    return {i: torch.cat(parts) for i, parts in out.items()}


def _decode_rows(windows: TopWindows, rows: dict[int, torch.Tensor]) -> tuple[dict, dict]:
    """Rows of level (top - 1) latents -> for each, the bytes of every segment's piece but the last (`stable`) and
    of all of them (`whole`); one decoder batch for all rows."""
    if not rows:
        return {}, {}
    model, cutoff = windows.model, windows.config.existence_threshold
    below = windows.top - 1
    if below < 0:  # a one-level model: the kept positions are byte vectors, nothing to stitch
        return ({i: model.nearest_bytes(row[:-1]) for i, row in rows.items()},
                {i: model.nearest_bytes(row) for i, row in rows.items()})
    pieces = model.levels[below].decode_pieces(list(rows.values()), cutoff=cutoff,
                                               noise_level=model.config.handoff_noise_level)

    def to_bytes(parts: list[torch.Tensor]) -> torch.Tensor:
        if not parts:
            return torch.zeros(0, dtype=torch.long, device=model.device)
        if below == 0:
            return model.nearest_bytes(torch.cat(parts))
        return model.decode_latents([torch.cat(parts)], level=below - 1, cutoff=cutoff, estimates=True)[0]

    stable = {i: to_bytes(p[:-1]) for i, p in zip(rows, pieces)}
    whole = {i: (torch.cat([stable[i], to_bytes(p[-1:])]) if below == 0 else to_bytes(p)) for i, p in zip(rows, pieces)}
    return stable, whole


def _bridges(windows: TopWindows, samples: list[LongSample]) -> None:
    """Step 3: one infilling window between each text so far and its suffix: gap_segments new positions, then the
    suffix's first top-level segment known."""
    spans, _, _ = windows.around([Prompt(s.text, s.prompt.suffix) for s in samples],
                                 seeds=[window_seed(s.seed, BRIDGE_WINDOW) for s in samples], left_context=False)
    for sample, span in zip(samples, spans):
        _emit(windows, sample, torch.cat([windows.decode(span), sample.prompt.suffix]))


def _chained(windows: TopWindows, samples: list[LongSample]) -> None:
    """chain_windows: windows one after another, each a continuation of the text so far (its last top-level
    segment known, by replacement); samples that are done, or whose window added nothing, leave the batch."""
    active, window = list(range(len(samples))), 0
    while active:
        seeds = [window_seed(samples[i].seed, window) for i in active]
        if window == 0 and not samples[0].prompted:
            added = windows.from_noise(len(active), seeds)[0]
        else:
            texts = windows.around_prompts([Prompt(samples[i].text) for i in active], seeds=seeds)[0]
            added = [text[len(samples[i].text):] for text, i in zip(texts, active)]
        for i, new in zip(active, added):
            _emit(windows, samples[i], new[: max(0, samples[i].budget - samples[i].emitted)])  # the last: cut
        active = [i for i, new in zip(active, added) if len(new) > 0 and samples[i].emitted < samples[i].budget]
        window += 1
