"""FSDP2 (issue #15): the micro model wrapped with `fully_shard` on 2 CPU processes over gloo trains with the
same losses as one process (each rank gets the same batch and seed, so the averaged gradient is the same)."""

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_zonkey import ZonkeyConfig, ZonkeyModel, ZonkeyTokenizer

MICRO = Path(__file__).resolve().parents[1] / "configuration" / "zonkey-micro.json"
TEXTS = ["The river flows north through the old town.", "In 1889 the railway station opened.",
         "Species of this genus live in shallow water.", "She wrote three albums and toured Europe twice."]
STEPS = 3


def train(sharded: bool) -> list[float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ZonkeyModel(ZonkeyConfig.from_pretrained(str(MICRO))).train()
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for level in model.levels:
            fully_shard(level)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = ZonkeyTokenizer()(TEXTS, padding=True, return_tensors="pt")
    losses = []
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        loss = model(batch["input_ids"], batch["attention_mask"], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        losses = train(sharded=True)
        if rank == 0:
            Path(out).write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fully_shard_on_two_cpu_processes_trains_like_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "losses.json"
    mp.spawn(worker, args=(port, str(out)), nprocs=2, join=True)
    sharded = json.loads(out.read_text())
    single = train(sharded=False)
    assert sharded == pytest.approx(single, rel=1e-4), (sharded, single)
    assert sharded[-1] < sharded[0]
