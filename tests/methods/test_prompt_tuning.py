"""Prompt Tuning: initializers, placements, and label alignment on token-level heads."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from conftest import BOS, build, pad
from tokenizers_util import bpe_tokenizer

import softprompt


def _gpt2(vocab=300):
    return build("gpt2", vocab_size=vocab)


def test_random_init_is_uniform_half():
    pm = softprompt.attach(_gpt2(), softprompt.PromptTuningConfig(num_virtual_tokens=50))
    table = pm.tasks["default"].input_prompt.encoder.weight
    assert table.shape == (50, 32)
    assert table.min() >= -0.5 and table.max() <= 0.5 and table.std() > 0.2


def test_text_init_uses_the_embeddings_of_the_text_cycled_to_length():
    tok = bpe_tokenizer()
    model = _gpt2()
    config = softprompt.PromptTuningConfig(num_virtual_tokens=7, init="text", init_text="the movie")
    pm = softprompt.attach(model, config, tokenizer=tok)
    ids = tok("the movie", add_special_tokens=False)["input_ids"]
    expected_ids = (ids * 7)[:7]
    expected = model.get_input_embeddings().weight[expected_ids]
    torch.testing.assert_close(pm.tasks["default"].input_prompt.encoder.weight, expected)


def test_labels_init_starts_with_label_words_then_vocabulary():
    tok = bpe_tokenizer()
    model = _gpt2()
    config = softprompt.PromptTuningConfig(num_virtual_tokens=5, init="labels", label_words={"pos": "great", "neg": "terrible"})
    pm = softprompt.attach(model, config, tokenizer=tok)
    word_ids = pm.tasks["default"].label_word_ids.tolist()
    table = pm.tasks["default"].input_prompt.encoder.weight
    torch.testing.assert_close(table[:2], model.get_input_embeddings().weight[word_ids])
    special = set(tok.all_special_ids)
    rows = model.get_input_embeddings().weight
    for row in table[2:]:
        hits = [i for i in range(rows.shape[0]) if torch.equal(rows[i], row)]
        assert hits and hits[0] not in special


def test_vocab_init_samples_real_non_special_tokens():
    tok = bpe_tokenizer()
    model = _gpt2()
    pm = softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=6, init="vocab"), tokenizer=tok)
    rows = model.get_input_embeddings().weight
    for row in pm.tasks["default"].input_prompt.encoder.weight:
        match = (rows == row).all(-1).nonzero().flatten().tolist()
        assert match and match[0] not in tok.all_special_ids


def test_text_init_without_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        softprompt.attach(_gpt2(), softprompt.PromptTuningConfig(init="text", init_text="hello"))


@pytest.mark.parametrize(("placement", "position"), [("prefix", 0), ("after_bos", 1), ("suffix", 4)])
def test_placement_puts_the_soft_tokens_where_asked(placement, position):
    """Check where the soft tokens went by capturing the inputs_embeds the base model receives."""
    model = build("llama")
    pm = softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=2, placement=placement))
    seen = {}
    model.model.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    rows = [[BOS, 10, 11, 12]]
    batch = pad(rows, left=True)
    pm(**batch)
    embeds = seen["inputs_embeds"][0]
    soft = pm.tasks["default"].input_prompt.encoder.weight
    assert embeds.shape[0] == 6
    torch.testing.assert_close(embeds[position : position + 2], soft)
    tokens = model.get_input_embeddings()(torch.tensor(rows[0]))
    rest = torch.cat([embeds[:position], embeds[position + 2 :]])
    torch.testing.assert_close(rest, tokens)
    assert torch.equal(seen["position_ids"][0], torch.arange(6))


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_token_classification_labels_are_extended_for_virtual_tokens(method):
    """The base model's token-classification head gets labels aligned with the longer sequence."""
    from conftest import make_rows, method_config

    model = build("bert", auto=T.AutoModelForTokenClassification, num_labels=3)
    pm = softprompt.attach(model, method_config(method, 4))
    rows = make_rows("bert", method, [6, 4])
    batch = pad(rows, left=False)
    labels = torch.randint(0, 3, batch["input_ids"].shape).masked_fill(batch["attention_mask"] == 0, -100)
    out = pm(**batch, labels=labels)
    assert out.logits.shape == (*batch["input_ids"].shape, 3)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in pm.trainable_parameters())


def test_token_type_ids_follow_their_tokens():
    model = build("bert", auto=T.AutoModelForSequenceClassification, num_labels=2, type_vocab_size=2)
    pm = softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=3))
    rows = [[BOS, 10, 11, 12, 13]]
    batch = pad(rows, left=False)
    types = torch.tensor([[0, 0, 0, 1, 1]])
    seen = {}
    model.bert.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    pm(**batch, token_type_ids=types)
    assert seen["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]]
