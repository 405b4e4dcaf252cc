#!/usr/bin/env python
"""The paper's check 3: DDMM's mixed-step objective vs a plain single-step denoising objective, measured as
reconstruction quality against the number of denoising steps.

Two one-level Zonkeys train on the default Wikipedia corpus with the same seed, data and budget, one with
`ddmm_objective="mixed"` (clean -> heavy -> light passes, the path positive) and one with "single_step"
(denoise from a random t in one pass). Held-out documents are then encoded, their latents noised to t and
denoised with K steps of the DDMM sampler (model.generate(noise_level=t, level=0)), and decoded; printed:
character error rate and byte accuracy per (objective, t, K). A model that benefits from more steps shows
falling CER as K grows.

    python examples/experiments/ddmm_vs_single_step.py [--steps 400]
    python examples/experiments/ddmm_vs_single_step.py --model runs/zonkey-tiny   # the same table for a saved model
"""

import argparse
import math

import torch
from common import one_level_config, train  # examples/experiments/common.py

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.suite import held_out_documents, reconstruction_metrics
from modeling_zonkey.training.data import load_text_datasets


def scores(model, documents: list[bytes], t: float, steps: int, seed: int = 0) -> tuple[float, float]:
    """(CER, byte accuracy) of encode -> noise level-0 latents to t -> `steps` sampler steps -> decode (the
    sampler of model.generation_config)."""
    num_steps = max(1, math.floor(steps / t)) if t > 0 else 1  # generate() runs ceil(num_steps * t) steps from t
    result = reconstruction_metrics(model, documents, (t,), seed, num_steps=num_steps)[f"t={t:g}"]["level0"]
    return result["cer"], result["byte_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps of each model")
    parser.add_argument("--documents", type=int, default=32, help="held-out documents")
    parser.add_argument("--noise_levels", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--sampler_steps", type=int, nargs="+", default=[1, 2, 5, 10, 25])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a saved Zonkey folder: measure it instead of training two")
    parser.add_argument("--samplers", nargs="+", default=["ddmm"], help="ddmm, ddim and/or deterministic")
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = load_text_datasets()
    length = 256
    print("| objective | sampler | t | sampler steps | CER | byte accuracy | (t = 0: CER, byte acc.) |")
    print("|---|---|---:|---:|---:|---:|---|")
    if args.model:
        models = [(f"{args.model} ({ZonkeyModel.config_class.from_pretrained(args.model).ddmm_objective})",
                   lambda: ZonkeyModel.from_pretrained(args.model).eval())]
    else:
        train_docs = held_out_documents(corpus["train"]["text"], length, 4000)
        models = [(objective, lambda objective=objective: train(one_level_config(ddmm_objective=objective), train_docs,
                                                                 args.steps, seed=args.seed))
                  for objective in ("mixed", "single_step")]
    for objective, build in models:
        model = build()
        held = held_out_documents(corpus["validation"]["text"], model.config.document_length[0], args.documents)
        clean = scores(model, held, 0.0, 1)
        for sampler in args.samplers:
            model.generation_config.sampler = sampler
            for t in args.noise_levels:
                for k in args.sampler_steps:
                    cer, accuracy = scores(model, held, t, k, args.seed)
                    print(f"| {objective} | {sampler} | {t:g} | {k} | {cer:.3f} | {accuracy:.1%} | {clean[0]:.3f}, "
                          f"{clean[1]:.1%} |", flush=True)


if __name__ == "__main__":
    main()
