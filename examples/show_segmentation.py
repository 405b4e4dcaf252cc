#!/usr/bin/env python
"""Print what a trained Zonkey learned on a held-out paragraph: its segmentation at every level and its
reconstruction (encode -> decode at t = 0).

    python examples/show_segmentation.py runs/zonkey-tiny            # a paragraph of the validation split
    python examples/show_segmentation.py runs/zonkey-tiny --text "Your own text."

Level-0 segment starts are marked with "|", level-1 starts (groups of level-0 segments) with "‖".
"""

import argparse

import torch
from transformers import AutoModel, AutoTokenizer

import modeling_zonkey  # noqa: F401  (registers the Auto classes)
from modeling_zonkey.evaluation.inspection import level_starts, mark_boundaries
from modeling_zonkey.training.data import load_text_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder written by save_pretrained (e.g. the training script's --output_dir)")
    parser.add_argument("--text", default=None, help="text to segment (default: a held-out Wikipedia paragraph)")
    parser.add_argument("--index", type=int, default=0, help="which validation article (default corpus)")
    args = parser.parse_args()

    model = AutoModel.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    limit = model.config.document_length[0]
    text = args.text or load_text_datasets()["validation"][args.index]["text"]
    data = text.encode("utf-8")
    if len(data) > limit:
        cut = data[:limit].rfind(b" ")
        data = data[: cut if cut > 0 else limit]
        print(f"(showing the first {len(data)} of {len(text.encode('utf-8'))} bytes: the model reads documents of "
              f"at most {limit} bytes)")
        text = data.decode("utf-8", errors="ignore")
    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch).levels
    starts = level_starts(outputs, 0)
    print("\nSegmentation (| level-0 segment start, ‖ level-1 start):\n")
    print(mark_boundaries(data, starts))
    print("\n" + ", ".join(f"level {level}: {len(s)} segments ({len(data) / max(len(s), 1):.1f} bytes each)"
                           for level, s in enumerate(starts)))
    for level in range(model.config.num_levels):
        ids = model.reconstruct(**batch, from_level=level)[0]
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        same = sum(a == b for a, b in zip(ids.tolist(), batch["input_ids"][0].tolist()))
        print(f"\nReconstruction from level-{level} latents ({same}/{len(data)} bytes right):\n{decoded}")


if __name__ == "__main__":
    main()
