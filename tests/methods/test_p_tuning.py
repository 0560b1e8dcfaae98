"""P-Tuning: templates with soft slots and anchors, the LSTM prompt encoder, label words at [MASK]."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from conftest import build
from tokenizers_util import bpe_tokenizer, minilm_tokenizer

import softprompt


def test_template_renders_slots_fields_anchors_and_mask_for_a_masked_lm():
    tok = minilm_tokenizer()
    model = build("bert", vocab_size=tok.vocab_size)
    config = softprompt.PTuningConfig(template="[P:2] {premise} [P] ? {hypothesis} [P:2] It was [MASK] .")
    pm = softprompt.attach(model, config, tokenizer=tok)
    batch = pm.tokenize([{"premise": "cats sleep", "hypothesis": "dogs bark"}])
    ids = batch["input_ids"][0].tolist()
    words = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    expected = ([tok.cls_token_id, -1, -2] + words("cats sleep") + [-3] + words("?") + words("dogs bark")
                + [-4, -5] + words("It was") + [tok.mask_token_id] + words(".") + [tok.sep_token_id])
    assert ids == expected
    assert config.num_virtual_tokens == 5


def test_template_for_a_causal_lm_stops_at_mask_and_scores_the_next_token():
    tok = bpe_tokenizer()
    model = build("gpt2", vocab_size=300)
    config = softprompt.PTuningConfig(template="[P:3] {text} [P:3] It was [MASK] .", labels=["neg", "pos"],
                                      label_words=["terrible", "great"])
    pm = softprompt.attach(model, config, tokenizer=tok)
    batch = pm.tokenize(["the movie was great", "awful"])
    assert batch["attention_mask"][1, 0] == 0  # left padded for a decoder
    first = batch["input_ids"][0].tolist()
    assert first[-len(tok(" It was", add_special_tokens=False)["input_ids"]):] == tok(" It was", add_special_tokens=False)["input_ids"]
    out = pm(**batch, labels=torch.tensor([1, 0]))
    word_ids = pm.tasks["default"].label_word_ids
    first_word_piece = lambda w: next(i for i in tok(" " + w)["input_ids"] if tok.decode([i]).strip())  # noqa: E731
    assert word_ids.tolist() == [first_word_piece("terrible"), first_word_piece("great")]
    torch.testing.assert_close(out["label_logits"], out.logits[:, -1][:, word_ids])
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out["label_logits"], torch.tensor([1, 0])))


def test_label_words_are_scored_at_the_mask_of_a_masked_lm():
    tok = minilm_tokenizer()
    model = build("bert", vocab_size=tok.vocab_size)
    config = softprompt.PTuningConfig(template="[P:3] {text} It was [MASK] .", label_words={"neg": "bad", "pos": "good"})
    pm = softprompt.attach(model, config, tokenizer=tok)
    batch = pm.tokenize(["a fine film", "dull"])
    out = pm(**batch)
    where = (batch["input_ids"] == tok.mask_token_id).long().argmax(-1)
    expected = out.logits[torch.arange(2), where][:, [tok.convert_tokens_to_ids("bad"), tok.convert_tokens_to_ids("good")]]
    torch.testing.assert_close(out["label_logits"], expected)


def test_lstm_encoder_is_the_papers_and_is_folded_away_on_export(tmp_path):
    model = build("gpt2")
    pm = softprompt.attach(model, softprompt.PTuningConfig(template="[P:3] {text} [P:3]", encoder="lstm"))
    encoder = pm.tasks["default"].input_prompt.encoder
    assert isinstance(encoder.lstm, torch.nn.LSTM)
    assert encoder.lstm.bidirectional and encoder.lstm.num_layers == 2 and encoder.lstm.hidden_size == 16
    assert [type(m).__name__ for m in encoder.mlp] == ["Linear", "ReLU", "Linear"]
    pm.export(tmp_path / "export")
    meta = softprompt.checkpoint.read_meta(tmp_path / "export")
    assert meta["tasks"]["default"]["encoder"] == "none"
    loaded = softprompt.load(model, tmp_path / "export")
    assert [n for n, _ in loaded.tasks.named_parameters()] == ["default.input_prompt.encoder.weight"]
    torch.testing.assert_close(loaded.tasks["default"].input_prompt.encoder.weight, encoder().detach())


def test_mlp_encoder():
    pm = softprompt.attach(build("gpt2"), softprompt.PTuningConfig(template="{text} [P:4]", encoder="mlp"))
    encoder = pm.tasks["default"].input_prompt.encoder
    assert encoder().shape == (4, 32)
    assert [type(m).__name__ for m in encoder.mlp] == ["Linear", "ReLU", "Linear"]


def test_rows_without_slots_are_refused_with_the_fix():
    pm = softprompt.attach(build("gpt2"), softprompt.PTuningConfig(template="[P:2] {text}"))
    with pytest.raises(ValueError, match="PromptModel.tokenize"):
        pm(input_ids=torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(template="{text} [MASK]"), "no soft slot"),
        (dict(template="[P:3] [MASK]"), "no input field"),
        (dict(num_virtual_tokens=9, template="[P:3] {text} [P:3] It was [MASK]."), "holds 6 soft tokens"),
        (dict(encoder="gru"), "encoder="),
    ],
)
def test_bad_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        softprompt.PTuningConfig(**kwargs)


def test_missing_template_field_is_named():
    tok = minilm_tokenizer()
    pm = softprompt.attach(build("bert", vocab_size=tok.vocab_size),
                           softprompt.PTuningConfig(template="[P:2] {premise} {hypothesis}"), tokenizer=tok)
    with pytest.raises(ValueError, match="hypothesis"):
        pm.tokenize([{"premise": "a"}])
