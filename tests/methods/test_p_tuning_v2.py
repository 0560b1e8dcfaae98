"""P-Tuning v2: deep prompts (all layers or a range), fresh heads, and an independent attention reference."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from conftest import BOS, build, pad

import softprompt


def _bert_reference(model: T.BertModel, ids, mask, prefix):
    """BERT's encoder written out by hand, with prefix keys/values (L, 2, H, P, D) in every layer.

    A layer's prefix may be None: that layer has none, but the positions still count P (the prompt's length).
    """
    emb = model.embeddings
    length = next(p for p in prefix if p is not None).shape[2]
    positions = torch.arange(ids.shape[1])[None] + length  # the prefix stands where a past would
    x = emb.word_embeddings(ids) + emb.position_embeddings(positions) + emb.token_type_embeddings(torch.zeros_like(ids))
    x = emb.LayerNorm(x)
    heads, dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    for i, layer in enumerate(model.encoder.layer):
        att = layer.attention.self
        split = lambda t: t.view(*t.shape[:2], heads, dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        keep = mask.float()
        if prefix[i] is not None:
            k = torch.cat([prefix[i][0].expand(ids.shape[0], -1, -1, -1), k], dim=2)
            v = torch.cat([prefix[i][1].expand(ids.shape[0], -1, -1, -1), v], dim=2)
            keep = torch.cat([torch.ones(ids.shape[0], length), keep], dim=1)  # (B, P + T)
        bias = (1.0 - keep)[:, None, None, :] * -1e9
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + bias, dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(*x.shape)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return x


def test_bert_deep_prompt_matches_an_independent_attention_computation():
    model = build("bert", auto=T.AutoModel)
    pm = softprompt.attach(model, softprompt.PTuningV2Config(num_virtual_tokens=5, prefix_dropout=0.0))
    batch = pad([[BOS, 5, 6, 7, 8, 9], [BOS, 10, 11]], left=False)
    with torch.no_grad():
        got = pm(**batch).last_hidden_state
        prefix = pm.tasks["default"].deep_prompt()["encoder"]
        expected = _bert_reference(model, batch["input_ids"], batch["attention_mask"], list(prefix))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_layer_range_puts_prompts_only_in_those_layers():
    model = build("bert", auto=T.AutoModel, num_hidden_layers=4)
    pm = softprompt.attach(model, softprompt.PTuningV2Config(num_virtual_tokens=3, layers=(1, 3), prefix_dropout=0.0))
    table = pm.tasks["default"].deep_prompt()["encoder"]
    assert table.shape[0] == 2
    assert pm.num_trainable_parameters() == 3 * 2 * 2 * 32
    batch = pad([[BOS, 5, 6, 7], [BOS, 8]], left=False)
    with torch.no_grad():
        got = pm(**batch).last_hidden_state
        expected = _bert_reference(model, batch["input_ids"], batch["attention_mask"], [None, table[0], table[1], None])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_reparameterization_is_optional():
    pm = softprompt.attach(build("bert", auto=T.AutoModel), softprompt.PTuningV2Config(projection_hidden_size=64))
    assert [type(m).__name__ for m in pm.tasks["default"].deep_prompt.encoders["encoder"].mlp] == ["Linear", "Tanh", "Linear"]


def test_sequence_classification_head_on_cls_trains_with_the_prompt():
    model = build("bert", auto=T.AutoModel)
    config = softprompt.PTuningV2Config(num_virtual_tokens=4, head="sequence-classification", labels=["neg", "pos", "neu"],
                                        prefix_dropout=0.0, head_dropout=0.0)
    pm = softprompt.attach(model, config)
    batch = pad([[BOS, 5, 6, 7], [BOS, 8]], left=False)
    labels = torch.tensor([2, 0])
    out = pm(**batch, labels=labels)
    assert out.logits.shape == (2, 3)
    with torch.no_grad():
        prefix = list(pm.tasks["default"].deep_prompt()["encoder"])
        hidden = _bert_reference(model, batch["input_ids"], batch["attention_mask"], prefix)[:, 0]  # [CLS]
    torch.testing.assert_close(out.logits, pm.tasks["default"].head.classifier(hidden), atol=1e-5, rtol=1e-5)
    out.loss.backward()
    names = {n for n, p in pm.tasks.named_parameters() if p.grad is not None}
    assert names == {"default.deep_prompt.encoders.encoder.weight", "default.head.classifier.weight",
                     "default.head.classifier.bias"}


def test_token_classification_head_on_every_token():
    model = build("bert", auto=T.AutoModel)
    config = softprompt.PTuningV2Config(num_virtual_tokens=4, head="token-classification", num_labels=5)
    pm = softprompt.attach(model, config)
    batch = pad([[BOS, 5, 6, 7], [BOS, 8]], left=False)
    labels = torch.tensor([[-100, 1, -100, 4], [-100, 3, -100, -100]])
    out = pm(**batch, labels=labels)
    assert out.logits.shape == (2, 4, 5)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 5), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning-v2"])
def test_heads_on_a_decoder_pool_the_last_real_token(method):
    from conftest import method_config

    model = build("llama")
    pm = softprompt.attach(model, method_config(method, 3, head="sequence-classification", num_labels=2, head_dropout=0.0))
    pm.eval()
    rows = [[5, 6, 7, 8], [9, 10]]
    with torch.no_grad():
        together = pm(**pad(rows, left=True)).logits
        alone = pm(**pad([rows[1]], left=True)).logits
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-5)


def test_head_on_an_encoder_decoder_is_refused():
    with pytest.raises(ValueError, match="encoder-decoder"):
        softprompt.attach(build("t5"), softprompt.PTuningV2Config(head="sequence-classification", num_labels=2))


def test_mixed_head_tasks_pad_logits_of_narrower_heads():
    model = build("bert", auto=T.AutoModel)
    pm = softprompt.attach(model, softprompt.PTuningV2Config(num_virtual_tokens=3, head="sequence-classification", num_labels=2))
    pm.add_task("three", softprompt.PTuningV2Config(num_virtual_tokens=5, head="sequence-classification", num_labels=3))
    pm.eval()
    rows = [[BOS, 5, 6], [BOS, 7, 8, 9]]
    with torch.no_grad():
        out = pm(**pad(rows, left=False), task=["default", "three"]).logits
        alone = pm(**pad([rows[1]], left=False), task="three").logits
    assert out.shape == (2, 3) and torch.isinf(out[0, 2])
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-5)
