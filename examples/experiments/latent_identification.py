#!/usr/bin/env python
"""Is the text still in a noised latent? For every level, held-out documents are encoded, each latent is noised to t,
and the noised latent's nearest clean latent (cosine) among all the documents' latents is looked up. Printed: how
often that is the latent itself (or a copy of it, cos > 0.99: the same word twice), against t. A level whose noised
latents still single out their own clean latent while one decode gives back much less text has a decoder, not a
noise level, that loses the text (docs/research/sampler-steps.md).

    python examples/experiments/latent_identification.py pretrained/zonkey-tiny-sentences --documents 16
"""

import argparse

import torch
import torch.nn.functional as F

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.ddmm import add_noise
from modeling_zonkey.evaluation.suite import document_batches, held_out_documents
from modeling_zonkey.training.data import load_text_datasets


@torch.no_grad()
def identification(model, documents: list[bytes], noise_levels: list[float], seed: int = 0) -> dict:
    """{level: {"latents": n, t: share of noised latents whose nearest clean latent is themselves or a copy}}."""
    latents: dict[int, list[torch.Tensor]] = {level: [] for level in range(model.config.num_levels)}
    for _, ids, mask in document_batches(documents, 8, model.device):
        for level, output in enumerate(model(ids, mask).levels):
            latents[level].append(output.latents[output.latent_mask])
    generator = torch.Generator(device=model.device).manual_seed(seed)
    results = {}
    for level, rows in latents.items():
        clean = torch.cat(rows)
        unit = F.normalize(clean.float(), dim=-1)
        results[level] = {"latents": len(clean)}
        for t in noise_levels:
            noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
            noised = add_noise(clean, torch.full((len(clean),), t, device=clean.device), noise=noise)
            nearest = (F.normalize(noised.float(), dim=-1) @ unit.T).argmax(-1)
            same = (unit[nearest] * unit).sum(-1) > 0.99
            results[level][t] = float(same.float().mean())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved Zonkey folder")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--noise_levels", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = ZonkeyModel.from_pretrained(args.model).eval()
    documents = held_out_documents(load_text_datasets()["validation"]["text"], model.config.document_length[0],
                                   args.documents)
    results = identification(model, documents, args.noise_levels, args.seed)
    print("| level | latents | " + " | ".join(f"t = {t:g}" for t in args.noise_levels) + " |")
    print("|---:|---:|" + "---:|" * len(args.noise_levels))
    for level, row in results.items():
        print(f"| {level} | {row['latents']} | " + " | ".join(f"{row[t]:.1%}" for t in args.noise_levels) + " |")


if __name__ == "__main__":
    main()
