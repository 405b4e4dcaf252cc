"""transformers' Trainer with a standard collator (issue #15): labels give the loss, unknown keywords are refused."""

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from modeling_zonkey import ZonkeyModel

pytestmark = pytest.mark.usefixtures("single_thread")
TEXTS = ["The river flows north through the old town.", "In 1889 the railway station opened.",
         "Species of this genus live in shallow water.", "She wrote three albums and toured Europe twice."] * 4


def test_trainer_trains_and_evaluates_with_a_causal_lm_collator(micro_config, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ZonkeyModel(micro_config)
    data = Dataset.from_dict({"text": TEXTS}).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             prediction_loss_only=True, dataloader_num_workers=0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collator)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    after = trainer.evaluate()["eval_loss"]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    assert after < before, (before, after)


def test_forward_refuses_unknown_keywords_and_foreign_labels(make_model):
    model = make_model()
    ids = torch.randint(97, 120, (2, 20))
    with pytest.raises(TypeError, match="atention_mask"):
        model(ids, atention_mask=torch.ones_like(ids))
    with pytest.raises(ValueError, match="labels must equal input_ids"):
        model(ids, labels=ids.flip(1))
    padded = torch.cat([ids, torch.full((2, 3), 256)], dim=1)
    labels = torch.where(padded == 256, -100, padded)
    torch.manual_seed(0)
    with_labels = model(padded, labels=labels).loss
    torch.manual_seed(0)
    assert with_labels == model(padded, return_loss=True).loss
    assert isinstance(model(ids, return_dict=False), tuple)
