"""Mixed precision (issue #15): under bfloat16 autocast the losses' cosines, logits and sums stay in float32.

A trained checkpoint is where bfloat16 broke: its decoded bytes have cosines above 0.996 with their embeddings,
which bfloat16 rounds to 1, and atanh(1) = inf made every forward's loss non-finite.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_main
from test_training import assert_ok, read_log, write_corpus

from modeling_zonkey import ZonkeyModel, ZonkeyTokenizer
from modeling_zonkey.sphere import cosine_logits

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pretrained" / "zonkey-tiny"
TEXTS = ["The river flows north through the old town, past the mill.", "In 1889 the railway station opened.",
         "Species of this genus live in shallow water and eat algae.",
         "She wrote three albums and toured Europe twice."]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cosine_logits_are_finite_for_bfloat16_cosines_at_one():
    cos = torch.tensor([1.0, 0.999, -1.0], dtype=torch.bfloat16)
    logits = cosine_logits(cos)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert logits[0] == pytest.approx(2 * torch.atanh(torch.tensor(1 - 1e-4)).item(), rel=1e-5)


def test_shipped_checkpoint_trains_under_bf16_autocast_with_the_fp32_losses():
    model = ZonkeyModel.from_pretrained(TINY, dtype=torch.float32).train()
    batch = ZonkeyTokenizer()(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for seed in range(4):
        torch.manual_seed(seed)
        with torch.no_grad():
            full = model(batch["input_ids"], batch["attention_mask"], return_loss=True).loss
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch["input_ids"], batch["attention_mask"], return_loss=True)
        assert all(torch.isfinite(v) for v in out.loss_terms.values()), seed
        assert out.loss.item() == pytest.approx(full.item(), rel=0.02), seed
        optimizer.zero_grad()
        out.loss.backward()
        norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        assert norms and all(torch.isfinite(n) for n in norms)
        optimizer.step()


def test_training_script_with_mixed_precision_bf16(in_process, tmp_path):
    train, validation, _ = write_corpus(tmp_path / "data")
    out = tmp_path / "bf16"
    result = run_main(in_process, ["--model_name_or_path", str(TINY), "--train_file", str(train),
                                   "--validation_file", str(validation), "--output_dir", str(out), "--mixed_precision",
                                   "bf16", "--max_train_steps", "3", "--per_device_train_batch_size", "4",
                                   "--eval_batches", "1", "--seed", "1"])
    assert_ok(result)
    losses = [row["loss"] for row in read_log(out)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((out / "train_results.json").read_text())["completed_steps"] == 3
