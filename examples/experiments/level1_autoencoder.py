"""Does level 1 keep its text? Train level-1 variants on a frozen, trained level 0 and measure what comes back.

Every arm starts from the same folder (its level 0 and byte embeddings, frozen), initialises level 1 afresh under the
preset with the arm's overrides (same seed; --continue_level1: from the folder's own level 1), trains it for
--max_train_steps with the same data order, and is scored on the same held-out documents: reconstruction from the top
(byte accuracy and CER, the encoder's offsets, and offsets inferred everywhere as in generation), level 1's decoded
cosine at t = 0 and the share of positions above 0.9, level-1 boundaries against sentence starts (inner F1 and its
chance level) and bytes per level-1 segment. Arms run --parallel at a time, one thread each.

    python examples/experiments/level1_autoencoder.py --model_name_or_path pretrained/zonkey-tiny-sentences \\
        --config_name configuration/zonkey-tiny-sentences.json --output_dir runs/level1-autoencoder \\
        --max_train_steps 600
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from modeling_zonkey import ZonkeyModel
from modeling_zonkey.evaluation.hierarchy import hierarchy_diagnosis
from modeling_zonkey.evaluation.suite import document_batches, held_out_documents, segmentation_metrics
from modeling_zonkey.training.data import load_text_datasets

ROOT = Path(__file__).resolve().parents[2]
WEIGHT = {"level_weights": [1.0, 1.0]}
DIRECT = {**WEIGHT, "ddmm_positive": "direct"}  # what the arms after the first four share
RECIPE = {**DIRECT, "loss_weights": {"regression": 1.0}, "num_cls_vectors": [2, 4], "window_length": [12, 8]}
ARMS = {  # arm -> config overrides of the preset
    "preset": {},
    "level-1 weight 1": WEIGHT,
    "weight 1, direct positive": DIRECT,
    "weight 1, no light pass": {**WEIGHT, "ddmm_objective": "single_step"},
    "direct, light pass x (1 - t1)": {**DIRECT, "light_pass_weight": "one_minus_t"},
    "direct, C_1 = 4": {**DIRECT, "num_cls_vectors": [2, 4]},
    "direct, C_1 = 8": {**DIRECT, "num_cls_vectors": [2, 8]},
    "direct, regression x 1": {**DIRECT, "loss_weights": {"regression": 1.0}},
    "direct, window 12": {**DIRECT, "window_length": [12, 12]},
    "direct, window 8": {**DIRECT, "window_length": [12, 8]},
    "direct, regression, C_1 = 4, window 8": {**DIRECT, "loss_weights": {"regression": 1.0}, "num_cls_vectors": [2, 4],
                                              "window_length": [12, 8]},
    "direct, regression, C_1 = 4, window 12": {**DIRECT, "loss_weights": {"regression": 1.0},
                                               "num_cls_vectors": [2, 4], "window_length": [12, 12]},
    # the recipe the arms above found, and one change undone (or one more) per arm
    "recipe": RECIPE,
    "recipe, path positive": {**RECIPE, "ddmm_positive": "path"},
    "recipe, no regression": {**RECIPE, "loss_weights": {"regression": 0.0}},
    "recipe, C_1 = 2": {**RECIPE, "num_cls_vectors": [2, 2]},
    "recipe, window 27": {**RECIPE, "window_length": [12, 27]},
    "recipe, level-1 weight 0.1": {**RECIPE, "level_weights": [1.0, 0.1]},
    "recipe, no light pass": {**RECIPE, "ddmm_objective": "single_step"},
    "recipe, light pass x (1 - t1)": {**RECIPE, "light_pass_weight": "one_minus_t"},
    "recipe, denoiser 4": {**RECIPE, "denoiser_layers": [2, 4]},  # level 1's denoiser twice as deep, from the start
    "clean reconstruction only": {**WEIGHT, "ddmm_objective": "single_step",
                                  "loss_weights": {"denoising": 0.0, "stitcher_sequence": 0.0, "masked_vector": 0.0}},
    "direct, level 1 deeper (4 / 2 / 4)": {**DIRECT, "compressor_layers": [2, 4], "decompressor_layers": [1, 2],
                                           "denoiser_layers": [2, 4]},
}


def folder_name(arm: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in arm).strip("-")


def train_command(args, arm: str, config: Path, folder: Path) -> list[str]:
    start = [] if args.continue_level1 else ["--reinit_levels", "1"]
    return [sys.executable, str(ROOT / "examples" / "train_zonkey.py"), "--model_name_or_path",
            args.model_name_or_path, "--config_name", str(config), *start, "--freeze_levels", "0",
            "--output_dir", str(folder), "--max_train_steps", str(args.max_train_steps), "--learning_rate",
            str(args.learning_rate), "--lr_scheduler_type", "cosine", "--num_warmup_steps", "50", "--seed",
            str(args.seed), "--per_device_train_batch_size", str(args.per_device_train_batch_size), "--eval_steps",
            str(args.eval_steps), "--eval_batches", "4", "--threads", "1", "--with_tracking",
            *(["--checkpointing_steps", str(args.checkpointing_steps), "--checkpoints_total_limit", "1"]
              if args.checkpointing_steps else []),
            *(["--resume_from_checkpoint", "latest"] if any(folder.glob("step_*")) else [])]


def run_arms(args, output: Path) -> dict[str, Path]:
    """Train every arm that has no train_results.json yet, --parallel at a time. -> arm: folder."""
    preset = json.loads(Path(args.config_name).read_text(encoding="utf-8"))
    folders, waiting, running = {}, [], []
    for arm in args.arms:
        folder = output / folder_name(arm)
        folders[arm] = folder
        if not (folder / "train_results.json").is_file():
            config = output / f"{folder.name}.json"
            config.write_text(json.dumps({**preset, **ARMS[arm]}, indent=2), encoding="utf-8")
            waiting.append((arm, train_command(args, arm, config, folder), folder))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            arm, command, folder = waiting.pop(0)
            folder.parent.mkdir(parents=True, exist_ok=True)
            log = open(output / f"{folder.name}.log", "w")
            running.append((arm, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"started {arm}", flush=True)
        time.sleep(5)
        for item in list(running):
            arm, process, log = item
            if process.poll() is not None:
                log.close()
                running.remove(item)
                if process.returncode:
                    raise SystemExit(f"arm {arm!r} failed (exit {process.returncode}); see its .log in {output}")
                print(f"finished {arm}", flush=True)
    return folders


def score(folder: Path, documents: list[bytes]) -> dict[str, float]:
    model = ZonkeyModel.from_pretrained(folder).eval()
    batches = [(ids, mask) for _, ids, mask in document_batches(documents, 8, model.device)]
    level1 = hierarchy_diagnosis(model, batches, cosines=(), handoff_levels=(0.0,))["level1"]
    segmentation = segmentation_metrics(model, documents)["level1"]
    results = json.loads((folder / "train_results.json").read_text())
    top = level1["top"]["t=0"]
    return {
        "top_accuracy": top["oracle"]["byte_accuracy"], "top_cer": top["oracle"]["cer"],
        "top_cer_inferred": top["inferred everywhere"]["cer"],
        "cosine": level1["decoded_cosine"], "share_09": level1["share_above_0.9"],
        "f1_inner": segmentation["f1_inner"], "f1_inner_chance": segmentation["f1_inner_chance"],
        "bytes_per_segment": segmentation["bytes_per_segment"],
        "minutes": results.get("train_minutes", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="a trained folder: its level 0 is kept, frozen")
    parser.add_argument("--config_name", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--continue_level1", action="store_true",
                        help="start level 1 from the folder's own level 1 (default: afresh); arms must keep its shapes")
    parser.add_argument("--max_train_steps", type=int, default=600)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=None,
                        help="checkpoint every N steps; a rerun resumes each unfinished arm from its latest checkpoint")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--documents", type=int, default=32, help="held-out documents the arms are scored on")
    args = parser.parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    folders = run_arms(args, output)
    torch.set_num_threads(max(1, args.parallel))
    length = ZonkeyModel.config_class.from_pretrained(folders[args.arms[0]]).document_length[0]
    documents = held_out_documents(load_text_datasets()["validation"]["text"], length, args.documents)
    print(f"\n{len(documents)} held-out documents, {sum(map(len, documents)):,} bytes; {args.max_train_steps} steps\n")
    print("| arm | top: byte accuracy / CER | top CER, offsets inferred | level-1 cos t = 0 (share > 0.9) | "
          "level-1 inner F1 (chance) | bytes / level-1 segment | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    table = {}
    for arm, folder in folders.items():
        m = table[arm] = score(folder, documents)
        print(f"| {arm} | {m['top_accuracy']:.1%} / {m['top_cer']:.3f} | {m['top_cer_inferred']:.3f} | "
              f"{m['cosine']:.3f} ({m['share_09']:.0%}) | {m['f1_inner']:.3f} ({m['f1_inner_chance']:.3f}) | "
              f"{m['bytes_per_segment']:.1f} | {m['minutes']:.0f} |", flush=True)
    (output / "results.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
