"""Where a checkpoint's weights come from: the training stages behind a run that continues another checkpoint
(`--model_name_or_path`), so that its card can state the whole training time, not only the last stage's.

examples/train_zonkey.py records them in train_results.json as `earlier_stages` (oldest first); the model card
(hub/model_card.py) adds them up. A stage is a dict: name (the folder's name), steps, minutes, minutes_complete
(False when the record lost the time before a resume, so `minutes` counts only the part after it), preset, threads,
num_processes, freeze_levels, unfreeze_at_step, freeze_splitters.
"""

import json
from pathlib import Path


def stage_summary(name: str, history: dict) -> dict:
    """One training stage from its train_results.json (`history`)."""
    args = history.get("args", {})
    minutes = history.get("train_minutes")
    return {"name": name, "steps": history.get("completed_steps"),
            "minutes": minutes if minutes is not None else history.get("train_minutes_this_run"),
            "minutes_complete": minutes is not None,
            "preset": Path(args["config_name"]).name if args.get("config_name") else None,
            "threads": args.get("threads"), "num_processes": history.get("num_processes", 1),
            "freeze_levels": args.get("freeze_levels"), "unfreeze_at_step": args.get("unfreeze_at_step"),
            "freeze_splitters": args.get("freeze_splitters")}


def training_stages(folder: str | Path, _seen: frozenset = frozenset()) -> list[dict]:
    """Every training stage behind the weights in `folder`, oldest first, ending with the folder's own run; [] when
    the folder has no train_results.json (e.g. a Hub id, or a model not trained by train_zonkey.py).

    A record written before `earlier_stages` existed is followed through its own `--model_name_or_path` while that
    folder is on this machine (a relative path is read from the current directory, as the training script did), and
    not into a folder already followed (a run that continued its own folder). An unreadable record counts as none."""
    record = Path(folder) / "train_results.json"
    if not record.is_file() or record.resolve() in _seen:
        return []
    try:
        history = json.loads(record.read_text())
    except (OSError, ValueError):  # an unreadable record tells nothing; it must not stop a training run
        return []
    if "earlier_stages" in history:
        before = history["earlier_stages"]
    else:
        parent = history.get("args", {}).get("model_name_or_path")
        before = training_stages(parent, _seen | {record.resolve()}) if parent else []
    return before + [stage_summary(Path(folder).name, history)]


def stages_sentence(stages: list[dict]) -> str:
    """The earlier stages in words, with their total, for the model card (a stage with an incomplete time makes
    the total a lower bound)."""
    parts = []
    for stage in stages:
        minutes = stage.get("minutes")
        time = "time not recorded" if minutes is None else (
            f"{minutes:.1f} minutes" + ("" if stage.get("minutes_complete", True) else " after a resume"))
        until = f" for its first {stage['unfreeze_at_step']:,} steps" if stage.get("unfreeze_at_step") else ""
        frozen = f", level(s) {stage['freeze_levels']} frozen{until}" if stage.get("freeze_levels") else ""
        if stage.get("freeze_splitters"):
            frozen += f", the segmentation of level(s) {stage['freeze_splitters']} fixed"
        threads = f", {stage['threads']} threads" if str(stage.get("threads") or 1) != "1" else ""
        processes = f", {stage['num_processes']} processes" if (stage.get("num_processes") or 1) > 1 else ""
        preset = f", preset `{stage['preset']}`" if stage.get("preset") else ""
        parts.append(f"`{stage['name']}` ({stage['steps']:,} steps, {time}{threads}{processes}{preset}{frozen})")
    steps = sum(stage.get("steps") or 0 for stage in stages)
    minutes = sum(stage.get("minutes") or 0.0 for stage in stages)
    complete = all(stage.get("minutes") is not None and stage.get("minutes_complete", True) for stage in stages)
    return (f"It continues the weights of {len(stages)} earlier stage(s), oldest first: " + "; ".join(parts)
            + f". Before this run: {steps:,} steps and {'' if complete else 'at least '}{minutes:.1f} minutes.")
