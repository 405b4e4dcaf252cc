"""Shared by the experiments: a one-level model config, a plain training loop, boundary scores on documents, and the
default corpus cut into training documents and held-out batches."""

import json
import time

import torch
from torch.utils.data import DataLoader
from transformers import get_scheduler

from modeling_zonkey import ZonkeyConfig, ZonkeyModel
from modeling_zonkey.evaluation.metrics import boundary_scores
from modeling_zonkey.training.data import ZonkeyDataCollator, build_level0_documents, load_text_datasets


def one_level_config(width: int = 64, window: int = 12, document: int = 256, **overrides) -> ZonkeyConfig:
    """A single-level Zonkey (bytes -> latents -> bytes): what the splitter and DDMM checks need."""
    return ZonkeyConfig(num_levels=1, hidden_size=[width], num_attention_heads=[4], window_length=[window],
                        num_cls_vectors=[2], compressor_layers=[2], decompressor_layers=[1], denoiser_layers=[2],
                        document_length=[document], max_decoded_segments=[256], level_weights=[1.0],
                        num_negatives=15, masked_vector_negatives=15, **overrides)


def train(config: ZonkeyConfig, documents: list[bytes], steps: int, lr: float = 2e-3, batch_size: int = 8,
          seed: int = 0, every: int = 0, callback=None) -> ZonkeyModel:
    """AdamW (eps 1e-7), grad clip 1.0, cosine decay; batches drawn with a seeded generator.
    callback(step, model) runs every `every` steps (model in eval mode during the call)."""
    torch.manual_seed(seed)
    model = ZonkeyModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-7)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    collate, generator = ZonkeyDataCollator(), torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(1, steps + 1):
        model.train()
        index = torch.randint(len(documents), (batch_size,), generator=generator).tolist()
        batch = collate([list(documents[i]) for i in index])
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if callback is not None and every and step % every == 0:
            model.eval()
            callback(step, model, time.time() - started)
    return model.eval()


@torch.no_grad()
def level0_boundaries(model: ZonkeyModel, documents: list[bytes], gold: list[list[int]], tolerance: int = 0):
    """Boundary scores of the model's level-0 segment starts (eval mode) against gold starts."""
    predicted = []
    collate = ZonkeyDataCollator()
    for i in range(0, len(documents), 16):
        chunk = documents[i : i + 16]
        out = model(**collate([list(d) for d in chunk])).levels[0]
        for row, data in enumerate(chunk):
            predicted.append(out.boundaries[row, : len(data)].nonzero().flatten().tolist())
    return boundary_scores(predicted, gold, tolerance)


def default_corpus(document_length: int, validation_documents: int, batch_size: int = 8):
    """The default Wikipedia corpus cut into documents of at most `document_length` bytes: (the training documents,
    the first `validation_documents` held-out documents in batches of `batch_size`), split as the training script
    splits it (5% of the articles, seed 0)."""
    raw = load_text_datasets(None, None, None, None, "text", 0.05, 0)
    documents, _ = build_level0_documents(raw, document_length)
    train_set = documents["train"].remove_columns(["article"])
    held_out = documents["validation"].remove_columns(["article"]).select(range(validation_documents))
    return train_set, list(DataLoader(held_out, batch_size=batch_size, collate_fn=ZonkeyDataCollator()))


def readme_optimizer(params, learning_rate: float, warmup_steps: int, planned_steps: int):
    """AdamW and the cosine schedule with warmup as the README's training command sets them (eps 1e-7, no weight
    decay). params: parameters or parameter groups. -> (optimizer, scheduler)"""
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0, eps=1e-7)
    return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps,
                                    num_training_steps=planned_steps)


def shuffled(documents, batch_size: int, seed: int) -> DataLoader:
    """The documents in batches, shuffled by a generator of its own seeded with `seed`."""
    return DataLoader(documents, batch_size=batch_size, shuffle=True, collate_fn=ZonkeyDataCollator(),
                      generator=torch.Generator().manual_seed(seed))


def optimizer_step(model, loss: torch.Tensor, optimizer, scheduler) -> None:
    """Backward, gradients clipped at norm 1, optimizer and schedule step."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def print_record(record: dict) -> None:
    """One JSON line, floats to 4 decimals."""
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)
