#!/usr/bin/env python
"""The DDMM check: does a sampler get better with more steps? Held-out documents are encoded, the latents of one level
are noised to t, denoised with K steps of a sampler (`model.generate(noise_level=t, level=l)`) and decoded down to
bytes; printed: 1 - CER for each (model, sampler, level, t) against K (the paper's claim: stable with steps; issue
#24 asked for a rise). Level 0 noises the word latents only; the top level's row is the whole hierarchy's.

Level-0 rows also print two per-byte references from one decode at t (`denoiser_curve`): the nearest byte's accuracy
(what K = 1 returns, the mode of the decoder's distribution) and the share of bytes a draw from that distribution gets
right, what a sampler that ends in a sample of the model's posterior can expect. When the draw is below the mode,
more steps of a sampler that samples cannot raise 1 - CER (docs/research/sampler-steps.md, section 10).

    python examples/experiments/sampler_steps.py pretrained/zonkey-tiny-sentences --samplers ddmm ddim
    python examples/experiments/sampler_steps.py runs/a runs/b --noise_levels 0.5 --sampler_steps 1 5 25 --levels 1
"""

import argparse
import json
import math
import time

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.suite import denoiser_metrics, held_out_documents, reconstruction_metrics
from modeling_zonkey.training.data import load_text_datasets


def num_steps_for(steps: int, t: float) -> int:
    """The num_steps for which generate(noise_level=t) runs exactly `steps` steps (it runs ceil(num_steps * t))."""
    num_steps = math.floor(steps / t + 1e-9)
    if math.ceil(num_steps * t) != steps:  # floating point: e.g. t = 0.68, K = 102 would run 103 steps
        num_steps -= 1
    return num_steps


def one_minus_cer(model, documents: list[bytes], level: int, t: float, steps: int, seed: int) -> float:
    """1 - CER after `steps` sampler steps from latents of `level` noised to t (the model's generation config)."""
    result = reconstruction_metrics(model, documents, (t,), seed, num_steps=num_steps_for(steps, t), levels=(level,))
    return 1.0 - result[f"t={t:g}"][f"level{level}"]["cer"]


def per_byte_reference(model, documents: list[bytes], t: float, seed: int) -> dict[str, float]:
    """One decode of the level-0 latents noised to t: {"nearest": the nearest bytes' accuracy, "draw": the share of
    bytes a draw from the decoder's distribution gets right} (per byte, the encoder's segmentation)."""
    curve = denoiser_metrics(model, documents, (t,), seed)["level0"][f"t={t:g}"]
    return {"nearest": curve["accuracy"], "draw": curve["true_byte_probability"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved Zonkey folders")
    parser.add_argument("--samplers", nargs="+", default=["ddmm", "ddim"], help="ddmm, ddim and/or deterministic")
    parser.add_argument("--noise_levels", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--sampler_steps", type=int, nargs="+", default=[1, 2, 5, 10, 25])
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="default: 0 and the top")
    parser.add_argument("--documents", type=int, default=32, help="held-out documents of the validation split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", type=json.loads, default={},
                        help='other generation options for every row, a JSON object, e.g. \'{"clamp_max_t": 0.3}\'')
    parser.add_argument("--output", default=None, help="also append each row as a JSON line to this file")
    args = parser.parse_args()
    validation = load_text_datasets()["validation"]["text"]
    columns = " | ".join(f"K = {k}" for k in args.sampler_steps)
    print(f"| model | sampler | level | t | {columns} | one decode, per byte: nearest / a draw | seconds |")
    print("|---|---|---:|---:|" + "---:|" * (len(args.sampler_steps) + 2))
    for folder in args.models:
        model = ZonkeyModel.from_pretrained(folder).eval()
        unknown = model.generation_config.update(**args.options)
        if unknown:
            parser.error(f"--options: unknown generation option(s) {sorted(unknown)}")
        model.generation_config.validate()
        documents = held_out_documents(validation, model.config.document_length[0], args.documents)
        levels = args.levels or sorted({0, model.config.num_levels - 1})
        # the one decode's references depend on t only: computed once, shown on every sampler's level-0 row
        references = {t: per_byte_reference(model, documents, t, args.seed) for t in args.noise_levels} \
            if 0 in levels else {}
        for sampler in args.samplers:
            model.generation_config.sampler = sampler
            for level in levels:
                for t in args.noise_levels:
                    started = time.time()
                    scores = [one_minus_cer(model, documents, level, t, k, args.seed) for k in args.sampler_steps]
                    reference = references[t] if level == 0 else None
                    cells = " | ".join(f"{s:.3f}" for s in scores)
                    refs = "" if reference is None else " / ".join(f"{v:.3f}" for v in reference.values())
                    print(f"| {folder} | {sampler} | {level} | {t:g} | {cells} | {refs} | "
                          f"{time.time() - started:.0f} |", flush=True)
                    if args.output:
                        with open(args.output, "a") as f:
                            f.write(json.dumps({"model": folder, "sampler": sampler, "options": args.options,
                                                "level": level, "t": t,
                                                "steps": args.sampler_steps, "one_minus_cer": scores,
                                                "one_decode": reference}) + "\n")


if __name__ == "__main__":
    main()
