#!/usr/bin/env python
"""Where the bytes from the top are lost: level 1's decoded latents against a random error of the same size.

Level 1 decodes each of its latents into estimates of the level-0 latents it holds; level 0 then decodes those
estimates to bytes. This script encodes held-out documents (eval-mode segmentation), decodes level 1's latents at
t = 0 and stitches them with the encoder's offsets, so that every estimate lines up with the level-0 latent it stands
for, then hands level 0 variants of its own latents and counts the bytes that come back (true offsets, t = 0):

    true                          the level-0 latents themselves (what level 0 alone gives back)
    level 1's estimates           what level 1 hands down (the oracle "from the top" of examples/evaluate.py)
    random error, same cosine     each true latent turned, along a random direction, to the cosine its estimate has
    half the error                halfway (on the sphere) between the true latent and its estimate
    sub-vector j from the truth   the estimate with its j-th of the C_0 vectors replaced by the true one

If level 1's estimates lose far more bytes than a random error of the same cosine, the error lies where level 0's
decoder is sensitive, and a loss on the cosine alone cannot see it (see the `handoff` loss weight).

    python examples/experiments/handoff_error.py pretrained/zonkey-tiny-phrases runs/zonkey-small/step_5000
"""

import argparse

import torch
import torch.nn.functional as F

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.hierarchy import ByteScores, encode, turn_to_cosine
from modeling_zonkey.evaluation.suite import document_batches, held_out_documents
from modeling_zonkey.sphere import to_sphere
from modeling_zonkey.training.checkpointing import model_or_checkpoint
from modeling_zonkey.training.data import load_text_datasets


def estimates_by_row(model: ZonkeyModel, encoded) -> list[torch.Tensor]:
    """Level 1's decoded latents, stitched with the encoder's offsets and joined per level-0 row: one (K_r, C_0 d_0)
    tensor per row, aligned with encoded.latents[0]."""
    rows = [torch.cat(pieces) for pieces in model.levels[1].decode_pieces(encoded.latents[1], encoded.gaps[1])]
    joined = [[] for _ in encoded.latents[0]]
    for row, parent in zip(rows, encoded.parents[1].tolist()):
        joined[parent].append(row)
    return [torch.cat(parts) if parts else true[:0] for parts, true in zip(joined, encoded.latents[0])]


@torch.no_grad()
def handoff_error(model: ZonkeyModel, documents: list[bytes], batch_size: int = 8, seed: int = 0) -> dict:
    """{"variants": {name: {"byte_accuracy", "cer"}}, "cosine": {"mean", "p05", "min"}, "sub_vector_cosine": [C_0],
    "latents": n, "mismatched_rows": rows whose estimate count differed (scored with the true latents instead)}."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    num_cls = model.config.num_cls_vectors[0]
    names = ["true", "level 1's estimates", "random error, same cosine", "half the error"] + [
        f"sub-vector {j} from the truth" for j in range(num_cls)]
    scores = {name: ByteScores() for name in names}
    cosines, sub_cosines, mismatched = [], [], 0
    for _, ids, mask in document_batches(documents, batch_size, model.device):
        encoded = encode(model, ids, mask)
        true = encoded.latents[0]
        estimates = estimates_by_row(model, encoded)
        aligned = [len(e) == len(t) for e, t in zip(estimates, true)]
        mismatched += aligned.count(False)
        estimates = [e if ok else t for e, t, ok in zip(estimates, true, aligned)]
        cos = [F.cosine_similarity(e.float(), t.float(), dim=-1) for e, t in zip(estimates, true)]
        cosines += cos
        width = true[0].shape[-1] // num_cls
        sub_cosines += [F.cosine_similarity(e.view(len(e), num_cls, width).float(),
                                            t.view(len(t), num_cls, width).float(), dim=-1)
                        for e, t in zip(estimates, true)]
        variants = {
            "true": true,
            "level 1's estimates": estimates,
            "random error, same cosine": [turn_to_cosine(t, c, generator) for t, c in zip(true, cos)],
            "half the error": [to_sphere(F.normalize(t.float(), dim=-1) + F.normalize(e.float(), dim=-1))
                               for e, t in zip(estimates, true)],
        }
        for j in range(num_cls):
            swapped = []
            for e, t in zip(estimates, true):
                mixed = e.clone()
                mixed[:, j * width:(j + 1) * width] = t[:, j * width:(j + 1) * width]
                swapped.append(to_sphere(mixed.float()))
            variants[f"sub-vector {j} from the truth"] = swapped
        for name, rows in variants.items():
            decoded = model.decode_latents([r.to(t.dtype) for r, t in zip(rows, true)], 0, None, encoded.gaps,
                                           handoff_noise_level=0.0, estimates=True)
            scores[name].add(decoded, ids, mask)
    cos = torch.cat(cosines)
    return {"variants": {name: scores[name].result() for name in names},
            "cosine": {"mean": float(cos.mean()), "p05": float(cos.quantile(0.05)), "min": float(cos.min())},
            "sub_vector_cosine": torch.cat(sub_cosines).mean(0).tolist(), "latents": len(cos),
            "mismatched_rows": mismatched}


def load(folder: str) -> ZonkeyModel:
    try:
        return model_or_checkpoint(folder)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders or step_N checkpoints (training weights)")
    parser.add_argument("--documents", type=int, default=32, help="held-out documents of the default corpus")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = [load(folder) for folder in args.models]
    raw = load_text_datasets()
    results = []
    for model in models:
        if model.config.num_levels < 2:
            raise SystemExit("error: the model has one level; nothing is handed down")
        documents = held_out_documents(raw["validation"]["text"], model.config.document_length[0], args.documents)
        results.append(handoff_error(model, documents, args.batch_size, args.seed))
    print("bytes back from level 0, given these latents (true offsets, t = 0)\n")
    print("| variant | " + " | ".join(args.models) + " |\n|---|" + "---:|" * len(args.models))
    print("| cos(estimate, true): mean / 5th percentile | "
          + " | ".join(f"{r['cosine']['mean']:.4f} / {r['cosine']['p05']:.4f}" for r in results) + " |")
    for name in results[0]["variants"]:
        print(f"| {name} | " + " | ".join(f"{100 * r['variants'][name]['byte_accuracy']:.1f}%"
                                          if name in r["variants"] else "" for r in results) + " |")
    for folder, r in zip(args.models, results):
        print(f"\n{folder}: {r['latents']} level-0 latents; per sub-vector cosine "
              f"{', '.join(f'{c:.4f}' for c in r['sub_vector_cosine'])}; rows whose estimates did not line up: "
              f"{r['mismatched_rows']}")


if __name__ == "__main__":
    main()
