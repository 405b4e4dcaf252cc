"""Where a saved Zonkey loses bytes on the way down from its top level, on held-out text; no training.

Prints, for every level l >= 1 (modeling_zonkey/evaluation/hierarchy.py): level l's decoded cosine with its targets
by window position, what level l - 1 makes of its own latents turned to cos 0.99 / 0.95 / 0.9 / 0.8, and the
reconstruction from level l for handoff noise levels 0 / 0.1 / 0.3 / 0.5 with the encoder's or inferred offsets;
and level 0's own errors (t = 0) by segment length and window position.

    python examples/experiments/where_bytes_are_lost.py pretrained/zonkey-tiny-sentences --documents 64
"""

import argparse
import json

import torch

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.hierarchy import hierarchy_diagnosis, level0_errors
from modeling_zonkey.evaluation.suite import document_batches, held_out_documents
from modeling_zonkey.evaluation.tables import hierarchy_markdown, level0_errors_markdown
from modeling_zonkey.training.data import load_text_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder written by save_pretrained")
    parser.add_argument("--documents", type=int, default=64, help="held-out documents of the validation split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    model = ZonkeyModel.from_pretrained(args.model).eval()
    documents = held_out_documents(load_text_datasets()["validation"]["text"], model.config.document_length[0],
                                   args.documents)
    torch.manual_seed(args.seed)
    batches = [(ids, mask) for _, ids, mask in document_batches(documents, 8, model.device)]
    results = hierarchy_diagnosis(model, batches, seed=args.seed)
    results["level0_errors"] = level0_errors(model, batches)
    print(f"{args.model}: {len(documents)} held-out documents, {sum(map(len, documents)):,} bytes")
    print("\n".join(hierarchy_markdown({k: v for k, v in results.items() if k != "level0_errors"})))
    print("\n".join(level0_errors_markdown(results["level0_errors"])))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
