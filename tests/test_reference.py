"""Reference equivalence with HuggingFace PEFT where PEFT is correct (forward without cache, no padding)."""

from __future__ import annotations

import pytest
import torch
from conftest import build, pad

import softprompt

peft = pytest.importorskip("peft", reason="PEFT is a test-only reference (pip install peft==0.21.2)")

ROWS = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]


def _perturbed(pm, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    return pm


def test_gpt2_prompt_tuning_matches_peft():
    sp = _perturbed(softprompt.attach(build("gpt2"), softprompt.PromptTuningConfig(num_virtual_tokens=4)))
    ref = peft.get_peft_model(build("gpt2"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(sp.tasks["default"].input_prompt.encoder.weight)
    batch = pad(ROWS, left=False)
    with torch.no_grad():
        expected = ref(**batch, use_cache=False).logits[:, 4:]  # PEFT keeps the virtual positions
        got = sp(**batch, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_t5_prompt_tuning_matches_peft():
    sp = _perturbed(softprompt.attach(build("t5"), softprompt.PromptTuningConfig(num_virtual_tokens=4)))
    ref = peft.get_peft_model(
        build("t5"), peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, num_transformer_submodules=1)
    )
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(sp.tasks["default"].input_prompt.encoder.weight)
    batch = {**pad(ROWS, left=False), "decoder_input_ids": torch.tensor([[0, 5, 6], [0, 7, 8]])}
    with torch.no_grad():
        expected = ref(**batch, use_cache=False).logits
        got = sp(**batch, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gpt2_prefix_tuning_matches_peft():
    config = softprompt.PrefixTuningConfig(num_virtual_tokens=4, projection_hidden_size=16)
    sp = _perturbed(softprompt.attach(build("gpt2"), config))
    ref = peft.get_peft_model(
        build("gpt2"),
        peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16),
    )
    ours = sp.tasks["default"].deep_prompt.encoders["decoder"]
    theirs = ref.prompt_encoder["default"]
    with torch.no_grad():
        theirs.embedding.weight.copy_(ours.embedding)
        for i in (0, 2):  # Linear, Tanh, Linear: the same layout of (layer, key/value, head, dim)
            theirs.transform[i].weight.copy_(ours.mlp[i].weight)
            theirs.transform[i].bias.copy_(ours.mlp[i].bias)
    batch = pad(ROWS, left=False)
    with torch.no_grad():
        expected = ref(**batch, use_cache=False).logits
        got = sp(**batch, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        with sp.disabled():
            base = sp(**batch).logits
    assert not torch.allclose(got, base, atol=1e-3)
