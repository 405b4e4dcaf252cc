"""Which level-1 change helps? Fine-tune one folder under a preset with one change undone per arm, same seed and
schedule, and print the validation at the same step as a Markdown table.

Each arm runs `examples/train_zonkey.py --model_name_or_path FOLDER --config_name <preset with the arm's
overrides>` for --stop_after_steps of a --max_train_steps cosine schedule, so every arm sees the same data, noise
and learning rates up to that step, and the arms differ only in what they name. The preset itself is arm "preset".

    OMP_NUM_THREADS=1 python examples/experiments/level1_ablation.py --model_name_or_path pretrained/zonkey-tiny \\
        --config_name configuration/zonkey-tiny-sentences.json --output_dir runs/level1-ablation \\
        --max_train_steps 3000 --stop_after_steps 300
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.suite import held_out_documents, segmentation_metrics
from modeling_zonkey.training.data import load_text_datasets

ROOT = Path(__file__).resolve().parents[2]

# arm -> (config overrides, extra training arguments); each undoes one change of the sentence preset. Arms with
# 256-byte documents take 4x the documents per batch, so that every arm trains and validates on as many bytes.
SHORT = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32"]
ARMS = {
    "preset": ({}, []),
    "regularisers x level_weights": ({"regularizer_level_weights": [1.0, 0.1]}, []),
    "sampled negatives": ({"infonce_negatives": "sampled"}, []),
    "level-1 window 12": ({"window_length": [12, 12]}, []),
    "256-byte documents": ({"document_length": [256, 64]}, SHORT),
    "first preset (all undone)": ({"regularizer_level_weights": [1.0, 0.1], "infonce_negatives": "sampled",
                                   "window_length": [12, 12], "document_length": [256, 64]},
                                  SHORT),
}
COLUMNS = {  # table header -> final_eval key
    "level-1 F1 vs sentence starts": "val/level1/boundary_f1",
    "bytes / level-1 segment": "val/level1/bytes_per_segment",
    "top byte accuracy": "val/byte_accuracy_top",
    "level-1 cos t = 0.5": "val/level1/cosine_t0.5",
    "level-0 byte accuracy": "val/byte_accuracy_level0",
    "level-0 F1": "val/boundary_f1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--config_name", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--max_train_steps", type=int, default=3000)
    parser.add_argument("--stop_after_steps", type=int, default=300)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score_bytes", type=int, default=65536, help="held-out bytes for the boundary table")
    args = parser.parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    preset = json.loads(Path(args.config_name).read_text(encoding="utf-8"))
    print("| arm | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    folders = {}
    for name in args.arms:
        overrides, extra = ARMS[name]
        folder = output / name.replace(" ", "-").replace("(", "").replace(")", "")
        results = folder / "train_results.json"
        if not results.is_file():
            config = output / f"{folder.name}.json"
            config.write_text(json.dumps({**preset, **overrides}, indent=2), encoding="utf-8")
            command = [sys.executable, str(ROOT / "examples" / "train_zonkey.py"),
                       "--model_name_or_path", args.model_name_or_path, "--config_name", str(config),
                       "--output_dir", str(folder), "--max_train_steps", str(args.max_train_steps),
                       "--stop_after_steps", str(args.stop_after_steps), "--learning_rate", str(args.learning_rate),
                       "--lr_scheduler_type", "cosine", "--num_warmup_steps", "100", "--seed", str(args.seed),
                       "--per_device_train_batch_size", str(args.per_device_train_batch_size),
                       "--eval_steps", str(args.stop_after_steps), "--eval_batches", str(args.eval_batches), *extra]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        folders[name] = folder
        final = json.loads(results.read_text())["final_eval"]
        print(f"| {name} | " + " | ".join(f"{final.get(key, float('nan')):.3f}" for key in COLUMNS.values()) + " |",
              flush=True)
    score_boundaries(folders, args.score_bytes)


def score_boundaries(folders: dict[str, Path], budget: int) -> None:
    """Level-1 boundaries against sentence starts on the first `budget` bytes of the validation split."""
    torch.set_num_threads(1)
    texts = load_text_datasets()["validation"]["text"]
    print("\n| arm | level-1 P / R / F1 | inner P / R / F1 | bytes / level-1 segment | level-0 F1 |")
    print("|---|---:|---:|---:|---:|")
    for name, folder in folders.items():
        model = ZonkeyModel.from_pretrained(folder).eval()
        length = model.config.document_length[0]
        metrics = segmentation_metrics(model, held_out_documents(texts, length, budget // length))
        one, zero = metrics["level1"], metrics["level0"]
        print(f"| {name} | {one['precision']:.3f} / {one['recall']:.3f} / {one['f1']:.3f} | "
              f"{one['precision_inner']:.3f} / {one['recall_inner']:.3f} / {one['f1_inner']:.3f} | "
              f"{one['bytes_per_segment']:.1f} | {zero['f1']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
