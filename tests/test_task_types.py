"""Every task type the base model can be: causal LM, seq2seq LM, sequence and token classification, features."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from conftest import METHODS, build, extra_inputs, make_rows, method_config, pad

import softprompt

TASK_TYPES = [
    ("gpt2", T.AutoModelForCausalLM, "logits"),
    ("llama", T.AutoModelForSequenceClassification, "logits"),
    ("t5", T.AutoModelForSeq2SeqLM, "logits"),
    ("bart", T.AutoModelForSeq2SeqLM, "logits"),
    ("bert", T.AutoModelForSequenceClassification, "logits"),
    ("bert", T.AutoModelForTokenClassification, "logits"),
    ("bert", T.AutoModel, "last_hidden_state"),
    ("roberta", T.AutoModelForTokenClassification, "logits"),
    ("gpt2", T.AutoModel, "last_hidden_state"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("family", "auto", "key"), TASK_TYPES, ids=[f"{f}-{a.__name__}" for f, a, _ in TASK_TYPES])
def test_every_task_type_runs_trains_and_keeps_each_row_alone(family, auto, key, method):
    model = build(family, auto=auto, num_labels=3)
    pm = softprompt.attach(model, method_config(method, 3))
    left = family in ("gpt2", "llama")
    rows = make_rows(family, method, [6, 4])
    batch = extra_inputs(family, pad(rows, left=left))
    with torch.no_grad():
        together = pm(**batch)[key]
        alone = pm(**{**extra_inputs(family, pad([rows[1]], left=left)),
                      **({"decoder_input_ids": batch["decoder_input_ids"][1:]} if "decoder_input_ids" in batch else {})})[key]
    per_token = together.dim() == 3 and family not in ("t5", "bart")
    if per_token:
        assert together.shape[1] == batch["input_ids"].shape[1], "outputs keep the caller's positions"
        torch.testing.assert_close(together[1][batch["attention_mask"][1].bool()], alone[0], atol=2e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(together[1], alone[0], atol=2e-5, rtol=1e-4)
    together.float().pow(2).mean().backward() if together.requires_grad else pm(**batch)[key].pow(2).mean().backward()
    assert all(p.grad is not None for p in pm.trainable_parameters())
    assert all(p.grad is None for p in model.parameters())
