"""Heads and label words: pooling written out by hand, the model's declared pooling, label-word scoring."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import BOS, build, pad

import softprompt
from softprompt._outputs import label_logits, last_real, pool
from softprompt._task import declared_pooling


def test_pool_first_last_and_mean_of_the_real_tokens():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # row 0: 0 1 2, row 1: 3 4 5
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right padded, left padded
    assert pool(hidden, mask, ["first", "first"]).flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, mask, ["last", "last"]).flatten().tolist() == [1.0, 5.0]
    assert pool(hidden, mask, ["mean", "mean"]).flatten().tolist() == [0.5, 4.5]
    assert pool(hidden, mask, ["mean", "first"]).flatten().tolist() == [0.5, 4.0]
    assert last_real(mask).tolist() == [1, 2]


def test_a_sentence_transformers_folder_declares_its_pooling(tmp_path):
    assert declared_pooling(str(tmp_path)) is None
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert declared_pooling(str(tmp_path)) == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert declared_pooling(str(tmp_path)) == "first"


def test_the_head_reads_the_pooling_the_config_asks_for():
    model = build("bert", auto=T.AutoModel)
    config = softprompt.PTuningV2Config(num_virtual_tokens=2, head="sequence-classification", num_labels=2,
                                        prefix_dropout=0.0, head_dropout=0.0, pooling="mean")
    pm = softprompt.attach(model, config)
    batch = pad([[BOS, 5, 6, 7], [BOS, 8]], left=False)
    with torch.no_grad():
        hidden = pm.base_model(**batch, position_ids=torch.arange(4)[None] + 2,
                               softprompt_prefixes=pm.prepare(**batch)["softprompt_prefixes"]).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        expected = pm.tasks["default"].head.classifier((hidden * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(pm(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling="):
        softprompt.PTuningV2Config(head="sequence-classification", num_labels=2, pooling="max")


def test_label_logits_pad_narrower_verbalizers_with_minus_infinity():
    logits = torch.arange(2 * 2 * 5, dtype=torch.float32).view(2, 2, 5)
    out = label_logits([torch.tensor([1, 3]), torch.tensor([0, 2, 4])], logits, torch.tensor([1, 0]))
    assert out.tolist() == [[6.0, 8.0, float("-inf")], [10.0, 12.0, 14.0]]
