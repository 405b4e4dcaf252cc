"""The model and the data of a training run (examples/train_zonkey.py): the model from a preset or a saved folder
(optionally under another config, with levels reinitialised or frozen), its byte tokenizer, and the documents of the
training and validation splits in loaders. A problem with the files or the config is a TrainingError with what to fix.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch import nn
from torch.utils.data import DataLoader

from ..configuration_zonkey import ZonkeyConfig
from ..decoder import CausalBlock
from ..modeling_zonkey import ZonkeyModel
from ..probabilistic_attention import PABlock
from ..tokenization_zonkey import ZonkeyTokenizer
from .data import (
    DataStats,
    ZonkeyDataCollator,
    build_level0_documents,
    load_streaming_documents,
    load_text_datasets,
)
from .run_folder import TrainingError

logger = get_logger(__name__)


@dataclass
class TrainingData:
    """The loaders (not yet prepared by accelerate) and what the data holds."""

    train_loader: DataLoader
    val_loader: DataLoader
    train_stats: DataStats | None  # None for a stream
    val_stats: DataStats
    evaluating: bool  # validation documents and --eval_batches > 0


def build_model_and_data(args, accelerator) -> tuple[ZonkeyModel, ZonkeyTokenizer, TrainingData]:
    """The model and tokenizer to train, and the documents in loaders; a bad file or config is a TrainingError."""
    try:
        model, tokenizer = build_model(args)
        with accelerator.main_process_first():
            train_set, val_set, train_stats, val_stats = load_documents(args, model.config.document_length[0])
    except (OSError, ValueError) as err:  # FileNotFoundError, UnicodeDecodeError, JSONDecodeError included
        raise TrainingError(str(err)) from err
    if args.torch_compile:
        model.compile_components()  # compiles lazily, in the first steps
        logger.info("--torch_compile: decoders and compressors compile during the first steps")
    logger.info(f"{train_stats.describe() if train_stats else f'train: streamed from {args.dataset_name}'}\n"
                f"{val_stats.describe()}")
    if train_stats and len(train_set) == 0:
        raise TrainingError("the training split has no documents (every article is empty).")
    evaluating = len(val_set) > 0 and args.eval_batches > 0
    if not evaluating:
        logger.info("no evaluation: " + ("--eval_batches 0" if len(val_set) else
                                         "the validation split has no documents (give --validation_file, or more "
                                         "articles and --validation_split_percentage > 0)"))
    collator = ZonkeyDataCollator(pad_token_id=model.config.pad_token_id)
    # Its own generator: starting an epoch's iterator draws a worker base seed from the loader's generator,
    # which would otherwise be the global RNG, and a resumed run starts its iterator at another point of the
    # training noise than the uninterrupted run. The shuffling order is reseeded per epoch (seedable sampler).
    train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=not args.streaming,
                              collate_fn=collator, drop_last=False, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_set, batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    return model, tokenizer, TrainingData(train_loader, val_loader, train_stats, val_stats, evaluating)


def build_model(args) -> tuple[ZonkeyModel, ZonkeyTokenizer]:
    """The model to train (from a preset, or a saved folder to fine-tune, optionally under a preset's config) and its
    byte tokenizer. Raises FileNotFoundError / ValueError / OSError with what to fix."""
    config = read_preset(args.config_name) if args.config_name else None
    source = args.model_name_or_path
    if source:
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"--model_name_or_path {source}: no config.json there (pass a folder written by "
                                    "save_pretrained or by this script, or a Hub id).")
        kwargs = {} if config is None or args.reinit_levels else {"config": config}
        try:
            model, loading = ZonkeyModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                                         **kwargs)
        except OSError as err:  # neither a folder nor a Hub id that can be fetched (or is in the cache offline)
            raise FileNotFoundError(f"--model_name_or_path {source}: not a local folder, and loading it as a Hub id "
                                    f"failed ({str(err).splitlines()[0]})") from err
        if args.reinit_levels:
            model = reinitialized(model, config or model.config, args.reinit_levels)
        else:
            grown = start_new_blocks_as_identity(model, loading["missing_keys"])
            if grown:
                logging.getLogger(__name__).info(
                    f"--config_name adds {len(grown)} block(s) to --model_name_or_path's model; each starts as the "
                    f"identity: {', '.join(grown)}")
    elif args.reinit_levels:
        raise ValueError("--reinit_levels keeps the other levels of --model_name_or_path: give one.")
    else:
        model = ZonkeyModel(config)
    tokenizer_source = args.tokenizer_name or source
    if tokenizer_source:
        try:
            tokenizer = ZonkeyTokenizer.from_pretrained(tokenizer_source)
        except OSError as err:
            raise FileNotFoundError(f"tokenizer {tokenizer_source}: {str(err).splitlines()[0]}") from err
    else:
        tokenizer = ZonkeyTokenizer()
    tokenizer.model_max_length = model.config.document_length[0]
    if args.freeze_levels:
        model.freeze_levels(args.freeze_levels)
    if getattr(args, "freeze_splitters", None):
        model.freeze_splitters(args.freeze_splitters)
    return model, tokenizer


def unfreeze(args, accelerator, model, step: int) -> None:
    """--unfreeze_at_step: every level trains from `step` on. The optimizer already holds the frozen levels'
    parameters (AdamW skips a parameter without a gradient), so their first update comes at the next step."""
    accelerator.unwrap_model(model).freeze_levels(())
    logger.info(f"step {step}: level(s) {args.freeze_levels} join training "
                f"(--unfreeze_at_step {args.unfreeze_at_step})")


def start_new_blocks_as_identity(model: ZonkeyModel, missing_keys: list[str]) -> list[str]:
    """Zero the output projections (attention and FFN) of every residual block none of whose weights were loaded, in a
    stack that kept some loaded blocks (a preset with more layers than the checkpoint), so that each new block adds
    nothing at the start and the grown model computes what the checkpoint did; they still receive gradients. A stack
    with no loaded block (a new level) keeps its fresh initialisation. Returns the new blocks' names."""
    missing = set(missing_keys)
    grown = []
    for stack_name, stack in model.named_modules():
        if not isinstance(stack, nn.ModuleList) or not all(isinstance(b, (PABlock, CausalBlock)) for b in stack):
            continue
        new = [index for index, block in enumerate(stack)
               if all(f"{stack_name}.{index}.{parameter}" in missing for parameter, _ in block.named_parameters())]
        if not new or len(new) == len(stack):
            continue
        for index in new:
            with torch.no_grad():
                for projection in (getattr(stack[index], "attn", stack[index]).o_proj, stack[index].ffn.down):
                    projection.weight.zero_()
                    projection.bias.zero_()
            grown.append(f"{stack_name}.{index}")
    return grown


def reinitialized(trained: ZonkeyModel, config: ZonkeyConfig, levels: list[int]) -> ZonkeyModel:
    """A fresh model under `config` holding `trained`'s weights everywhere but in `levels` (and, with level 0, the byte
    embeddings). A kept weight whose shape differs under `config` is a ValueError naming it."""
    if any(not 0 <= level < config.num_levels for level in levels):
        raise ValueError(f"--reinit_levels must lie in [0, {config.num_levels - 1}], got {levels}.")
    fresh = ZonkeyModel(config)
    prefixes = tuple(f"levels.{level}." for level in levels) + (("byte_embeddings.",) if 0 in levels else ())
    kept = {name: value for name, value in trained.state_dict().items() if not name.startswith(prefixes)}
    target = fresh.state_dict()
    for name, value in kept.items():
        if name not in target or target[name].shape != value.shape:
            raise ValueError(f"--reinit_levels {' '.join(map(str, levels))}: the kept weight {name} "
                             f"{tuple(value.shape)} does not fit the new config "
                             f"({tuple(target[name].shape) if name in target else 'absent'}); reinitialise its level "
                             "too.")
    unfilled = [name for name in target if name not in kept and not name.startswith(prefixes)]
    if unfilled:
        raise ValueError(f"--reinit_levels {' '.join(map(str, levels))}: the new config has weights the checkpoint "
                         f"lacks outside those levels ({', '.join(unfilled[:3])}, ...); reinitialise their levels too.")
    fresh.load_state_dict(kept, strict=False)
    return fresh


def read_preset(name: str) -> ZonkeyConfig:
    """A ZonkeyConfig from a preset JSON file, with a clear error for a missing or foreign file."""
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"--config_name {name}: no such file (presets are in configuration/).")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config_name {name} is not a valid JSON config file ({err}).") from err
    if not isinstance(values, dict):
        raise ValueError(f"--config_name {name} holds a JSON {type(values).__name__}, not a config object "
                         "({\"model_type\": \"zonkey\", ...}; see configuration/zonkey-tiny.json).")
    model_type = values.get("model_type", "zonkey")
    if model_type != "zonkey":
        raise ValueError(f"--config_name {name} has model_type '{model_type}', not 'zonkey'.")
    return ZonkeyConfig.from_pretrained(str(path))


def load_documents(args, length: int):
    """(train documents, validation documents, train DataStats or None when streamed, validation DataStats): the
    articles of --dataset_name / --train_file / the default corpus cut into documents of at most `length` bytes."""
    if args.streaming:
        train, validation, validation_stats = load_streaming_documents(
            args.dataset_name, args.dataset_config_name, length, args.text_column, args.streaming_validation_articles,
            args.seed)
        return train, validation.remove_columns(["article"]), None, validation_stats
    raw = load_text_datasets(args.dataset_name, args.dataset_config_name, args.train_file, args.validation_file,
                             args.text_column, args.validation_split_percentage / 100.0, args.seed)
    documents, stats = build_level0_documents(raw, length)
    return (documents["train"].remove_columns(["article"]), documents["validation"].remove_columns(["article"]),
            stats["train"], stats["validation"])
