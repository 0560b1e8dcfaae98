"""Prefix-Tuning: the MLP reparameterization, init from real words, dropout, encoder-decoder stacks."""

from __future__ import annotations

import pytest
import torch
from conftest import build, extra_inputs, pad
from tokenizers_util import bpe_tokenizer

import softprompt


def test_mlp_reparameterization_is_linear_tanh_linear_with_the_papers_width():
    pm = softprompt.attach(build("gpt2"), softprompt.PrefixTuningConfig())
    encoder = pm.tasks["default"].deep_prompt.encoders["decoder"]
    assert [type(m).__name__ for m in encoder.mlp] == ["Linear", "Tanh", "Linear"]
    assert encoder.mlp[0].out_features == 512 and encoder.embedding.shape == (10, 32)
    # 2 layers x (key, value) x 32 hidden
    assert encoder.mlp[2].out_features == 2 * 2 * 32
    prefix = pm.tasks["default"].deep_prompt()["decoder"]
    assert prefix.shape == (2, 2, 4, 10, 8)  # (L, 2, KVH, P, D)


def test_grouped_query_attention_prefix_has_kv_heads_only():
    pm = softprompt.attach(build("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    assert pm.tasks["default"].deep_prompt()["decoder"].shape == (2, 2, 2, 4, 8)


def test_init_from_real_words_reproduces_their_keys_and_values():
    tok = bpe_tokenizer()
    model = build("gpt2", vocab_size=300)
    text = "table-to-text :"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    table = softprompt.attach(model, softprompt.PrefixTuningConfig(num_virtual_tokens=len(ids), projection_hidden_size=None,
                                                                   init_text=text), tokenizer=tok)
    # The keys and values of those words, computed independently from GPT-2's own c_attn projection.
    hidden = model.transformer.wte(torch.tensor([ids])) + model.transformer.wpe(torch.arange(len(ids)))[None]
    block = model.transformer.h[0]
    qkv = block.attn.c_attn(block.ln_1(hidden))
    _, key, value = qkv.split(32, dim=2)
    key = key.view(1, len(ids), 4, 8).transpose(1, 2)[0]
    prefix = table.tasks["default"].deep_prompt()["decoder"]
    torch.testing.assert_close(prefix[0, 0], key, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefix[0, 1], value.view(1, len(ids), 4, 8).transpose(1, 2)[0], atol=1e-5, rtol=1e-5)
    mlp = softprompt.attach(build("gpt2", vocab_size=300), softprompt.PrefixTuningConfig(
        num_virtual_tokens=len(ids), projection_hidden_size=64, init_text=text), tokenizer=tok)
    fitted = mlp.tasks["default"].deep_prompt()["decoder"]
    assert torch.nn.functional.mse_loss(fitted, prefix) < 0.1 * prefix.pow(2).mean()


def test_prefix_dropout_is_active_only_in_training():
    pm = softprompt.attach(build("gpt2"), softprompt.PrefixTuningConfig(num_virtual_tokens=20, prefix_dropout=0.5))
    prompt = pm.tasks["default"].deep_prompt
    pm.train()
    assert (prompt()["decoder"] == 0).float().mean() > 0.3
    pm.eval()
    assert (prompt()["decoder"] == 0).float().mean() == 0


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_gets_encoder_decoder_and_cross_prefixes(family):
    model = build(family)
    pm = softprompt.attach(model, softprompt.PrefixTuningConfig(num_virtual_tokens=4, projection_hidden_size=16))
    assert set(pm.tasks["default"].deep_prompt.encoders) == {"encoder", "decoder", "cross"}
    batch = extra_inputs(family, pad([[5, 6, 7, 8]], left=False))
    with torch.no_grad():
        out = pm(**batch, output_hidden_states=True)
        with pm.disabled():
            base = pm(**batch, output_hidden_states=True)
    assert not torch.allclose(out.encoder_last_hidden_state, base.encoder_last_hidden_state, atol=1e-4)
    # Each stack alone has its effect: the encoder prefix changes the encoder states, the decoder
    # and cross prefixes leave them alone and change the logits.
    for stack in ("encoder", "decoder", "cross"):
        only = softprompt.attach(build(family), softprompt.PrefixTuningConfig(num_virtual_tokens=4, stacks=[stack],
                                                                             projection_hidden_size=None))
        with torch.no_grad():
            got = only(**batch)
        encoder_changed = not torch.allclose(got.encoder_last_hidden_state, base.encoder_last_hidden_state, atol=1e-4)
        assert encoder_changed == (stack == "encoder"), stack
        assert not torch.allclose(got.logits, base.logits, atol=1e-4 if stack != "encoder" else 1e-6), stack


def test_two_prefixes_give_different_first_generation_step():
    model = build("gpt2")
    pm = softprompt.attach(model, softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    pm.add_task("other", softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    batch = pad([[5, 6, 7]], left=True)
    a = pm.generate(**batch, max_new_tokens=1, output_logits=True, return_dict_in_generate=True).logits[0]
    b = pm.generate(**batch, task="other", max_new_tokens=1, output_logits=True, return_dict_in_generate=True).logits[0]
    assert not torch.allclose(a, b, atol=1e-4)


def test_beam_search_repeats_each_rows_prefix():
    pm = softprompt.attach(build("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    pm.add_task("other", softprompt.PrefixTuningConfig(num_virtual_tokens=2))
    rows = [[5, 6, 7], [8, 9]]
    beams = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    out = pm.generate(**pad(rows, left=True), task=["default", "other"], **beams)
    assert out.shape == (4, 6)
    for row, name in enumerate(["default", "other"]):
        alone = pm.generate(**pad([rows[row]], left=True), task=name, **beams)
        assert torch.equal(out[2 * row : 2 * row + 2, -3:], alone[:, -3:])


def test_unsupported_family_is_a_clear_error():
    with pytest.raises(ValueError, match="DeBERTa-v2"):
        softprompt.attach(build("deberta-v2"), softprompt.PrefixTuningConfig())
