"""Top-level windows, the unit that generate() writes.

A window is one top-level latent denoised from noise (`sampling.denoise`); for prompting, known positions are put
back after every step (a `Canvas`: replacement in latent space). Its final decode at t = 0 gives a window of
top-level positions, kept while their existence stays above the threshold; each kept position is a latent of the
level below (or a byte vector at level 0), decoded and stitched down to bytes.

`TopWindows(model, config, observers)` holds what every mode of a call shares (the model, the call's resolved
options, its progress bar and streamer) and offers the window operations the modes are built from: windows from
noise (`sample`, `from_noise`), windows around prompts (`around`, `around_prompts`), and decoding generated
positions to bytes (`decode`). generation_zonkey uses it for one-window calls, long_text for rows of windows.
"""

from dataclasses import dataclass

import torch
from transformers.utils.logging import tqdm  # (remote code may import only transformers, torch, numpy)

from .sampling import Canvas, denoise, final_decode, kept_length, noise_schedule, sample_generators, sample_noise
from .sphere import to_sphere

RANDOM_SEED_BOUND = 2**31 - 1  # without a seed, a call's base seed is drawn below this from torch's RNG


@dataclass
class Prompt:
    """One prompt of a call: prefix (P,) byte ids, and for infilling the suffix (S,) after the gap."""

    prefix: torch.Tensor
    suffix: torch.Tensor | None = None


@dataclass
class Observers:
    """What watches one generate() call: a tqdm bar over the denoising steps (progress_bar) and a streamer for
    its one sample (put: final ids; put_draft, where the streamer has it: each step's estimate of the text)."""

    progress_bar: bool = False
    streamer: object | None = None

    def bar(self, steps: int):
        return tqdm(total=steps, desc="denoising", unit="step", disable=not self.progress_bar)

    @property
    def wants_drafts(self) -> bool:
        return self.streamer is not None and hasattr(self.streamer, "put_draft")

    def put(self, ids: torch.Tensor) -> None:
        if self.streamer is not None and len(ids):
            self.streamer.put(ids.cpu())

    def put_draft(self, ids: torch.Tensor) -> None:
        self.streamer.put_draft(ids.cpu())


class TopWindows:
    """The window operations of one generate() call (config: its resolved ZonkeyGenerationConfig)."""

    def __init__(self, model, config, observers: Observers):
        self.model, self.config, self.observers = model, config, observers
        self.top = model.config.num_levels - 1

    def seeds(self, count: int) -> list[int]:
        """The seeds of a call's samples: config.seed + i (a random base drawn from torch's RNG without a seed)."""
        base = self.config.seed if self.config.seed is not None else int(torch.randint(0, RANDOM_SEED_BOUND, ()))
        return [base + i for i in range(count)]

    def clamp(self, level: int):
        """The denoiser's clamp at `level`: (sequence (M, L, d), existence (M, L), t) -> sequence, or None."""
        config = self.config
        if not config.clamp:
            return None

        def clamp(sequence: torch.Tensor, existence: torch.Tensor, t: float) -> torch.Tensor:
            if t > config.clamp_max_t:
                return sequence
            chosen = None if config.clamp_min_existence <= 0 else existence > config.clamp_min_existence
            return self.model.clamp_to_data(sequence, level, chosen, config.clamp_noise_level)

        return clamp

    def decode(self, positions: torch.Tensor) -> torch.Tensor:
        """Generated top-level positions (n, d_top) -> byte ids (n_bytes,): bytes directly at level 0, else the
        level-below latents they are, decoded (offsets inferred) down to bytes."""
        if len(positions) == 0:
            return torch.zeros(0, dtype=torch.long, device=positions.device)
        if self.top == 0:
            return self.model.nearest_bytes(positions)
        return self.model.decode_latents([positions], level=self.top - 1, cutoff=self.config.existence_threshold,
                                         estimates=True)[0]

    def kept(self, sequence: torch.Tensor, existence: torch.Tensor, start: int = 0,
             minimum: int = 1) -> list[torch.Tensor]:
        """The kept positions of each decoded window (M, L, d): from `start` until the existence (M, L) falls to
        the threshold (at least `minimum` positions from the window's start)."""
        ends = kept_length(existence, self.config.existence_threshold, minimum).tolist()
        return [sequence[i, start:end] for i, end in enumerate(ends)]

    def sample(self, count: int, canvas: Canvas | None = None, seeds: list[int] | None = None, spans=None):
        """`count` windows from noise (window i seeded with seeds[i], default config.seed + i), the canvas's known
        positions put back after every step. -> final latents (count, C d), decoded windows (count, L, d_top),
        existence (count, L). spans: (sequence, existence) -> the generated positions of each window (default:
        the kept ones), what a draft shows after every step (a call with a streamer writes one sample)."""
        model, config = self.model, self.config
        generators = sample_generators(self.seeds(count) if seeds is None else seeds, model.device)
        owner = torch.arange(count, device=model.device)
        spans = spans or self.kept
        on_step = None
        if self.observers.wants_drafts:
            def on_step(sequence: torch.Tensor, existence: torch.Tensor) -> None:
                self.observers.put_draft(self.decode(torch.cat(spans(sequence, existence))))
        z = to_sphere(sample_noise(generators, owner, model.config.latent_size(self.top), model.device, model.dtype))
        with self.observers.bar(config.num_steps) as bar:
            z = denoise(model.levels[self.top], z, noise_schedule(config.noise_schedule, config.num_steps),
                        config.sampler, generators, owner, canvas, bar, self.clamp(self.top), config.fresh_noise,
                        on_step)
        sequence, existence = final_decode(model.levels[self.top], z, canvas)
        return z, sequence, existence

    def from_noise(self, count: int, seeds: list[int] | None = None):
        """One window from noise per sample -> its bytes (a list of (n_i,) ids), final latents, existence."""
        z, sequence, existence = self.sample(count, None, seeds)
        return [self.decode(kept) for kept in self.kept(sequence, existence)], z, existence

    def around_prompts(self, prompts: list[Prompt], repeats: int = 1, seeds: list[int] | None = None):
        """Continuation (no suffix) or infilling (suffix) in one window per prompt (x repeats) -> each sample's
        bytes (prefix, generated bytes, suffix), final latents, existence."""
        spans, z, existence = self.around(prompts, repeats, seeds)
        samples = []
        for i, span in enumerate(spans):
            prompt = prompts[i // repeats]
            samples.append(torch.cat([prompt.prefix, self.decode(span)]
                                     + ([prompt.suffix] if prompt.suffix is not None else [])))
        return samples, z, existence

    def around(self, prompts: list[Prompt], repeats: int = 1, seeds: list[int] | None = None,
               min_new_positions: int = 1, left_context: bool = True):
        """One window per prompt (x repeats): its known start is the prompt's last top-level segment, the positions
        after it are generated (a continuation writes at least min_new_positions of them, more while the existence
        stays above the threshold; an infilling gap writes gap_segments, then the suffix's start is known).
        left_context=False: no known start (the gap starts the window, the suffix's start follows it).
        -> the generated top-level positions of each sample [(n_i, d_top)], final latents (M, C d), existence (M, L).
        """
        model, config = self.model, self.config
        window, limit = model.config.window_length[self.top], model.config.document_length[0]
        gap = config.gap_segments
        infilling = prompts[0].suffix is not None
        if infilling and gap > window - 2:
            raise ValueError(f"gap_segments = {gap} leaves no room for context in a top-level window of "
                             f"{window} positions: use at most {window - 2}.")
        canvases, lefts = [], []
        for prompt in prompts:
            known = torch.zeros(window, model.config.hidden_size[self.top], dtype=model.dtype, device=model.device)
            mask = torch.zeros(window, dtype=torch.bool, device=model.device)
            k_left = 0
            if left_context:  # only the prompt's end conditions the window: encode at most one document's bytes
                left, starts = self.context(prompt.prefix[-limit:])
                k_left = min(len(left) - starts[-1], window - 1 - (gap if infilling else 0))
                known[:k_left], mask[:k_left] = left[len(left) - k_left :], True
            exists = mask.clone()
            if infilling:
                right, _ = self.context(prompt.suffix[:limit])
                k_right = min(len(right), window - k_left - gap)
                known[k_left + gap : k_left + gap + k_right] = right[:k_right]
                mask[k_left + gap : k_left + gap + k_right] = True
                exists[: k_left + gap + k_right] = True
            canvases.append((known, mask, exists))
            lefts.append(k_left)
        known, mask, exists = (torch.stack([c[i] for c in canvases for _ in range(repeats)]) for i in range(3))

        def generated(sequence: torch.Tensor, existence: torch.Tensor) -> list[torch.Tensor]:
            if infilling:
                return [sequence[i, lefts[i // repeats] : lefts[i // repeats] + gap] for i in range(len(sequence))]
            return [self.kept(sequence[i : i + 1], existence[i : i + 1], lefts[i // repeats],
                              lefts[i // repeats] + min_new_positions)[0] for i in range(len(sequence))]

        z, sequence, existence = self.sample(len(known), Canvas(known, mask, exists), seeds, spans=generated)
        return generated(sequence, existence), z, existence

    def context(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """One text (N,) at the input of the top level (n, d_top), and where its top-level segments start."""
        model, top = self.model, self.top
        outputs = model(ids[None]).levels
        if top == 0:
            return model.embed_bytes(ids[None])[0], outputs[0].segments.start.tolist()
        below = outputs[top - 1]
        sequence = torch.cat([below.latents[r][below.latent_mask[r]] for r in range(len(below.parent))])
        segments, starts, offset = outputs[top].segments, [], 0
        for row in range(len(outputs[top].parent)):
            starts += [offset + s for s in segments.start[segments.document == row].tolist()]
            offset += int(outputs[top].valid[row].sum())
        return sequence, starts
