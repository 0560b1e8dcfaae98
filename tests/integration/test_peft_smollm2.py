"""A PEFT prefix adapter on real SmolLM2-135M weights (grouped-query attention: 9 heads, 3 key/value heads),
both ways against the installed PEFT."""

from __future__ import annotations

import json

import pytest
import torch

import softprompt

pytestmark = pytest.mark.slow
peft = pytest.importorskip("peft", reason="PEFT is a test-only reference (pip install peft==0.21.2)")


def test_peft_prefix_adapter_on_smollm2_both_ways(tmp_path):
    from softprompt.models import ModelError, load_model

    try:
        model, tokenizer = load_model("smollm2")
    except ModelError as error:
        pytest.skip(f"SmolLM2 is not installed here: {error}")
    ids = tokenizer("The Eagle is a coffee shop near the river", return_tensors="pt")
    with torch.no_grad():
        bare = model(**ids).logits
    torch.manual_seed(0)
    reference = peft.get_peft_model(model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    with torch.no_grad():
        reference.prompt_encoder.default.embedding.weight.normal_(0, 0.5)
    reference.save_pretrained(tmp_path / "adapter")
    reference.eval()
    with torch.no_grad():
        expected = reference(**ids, use_cache=False).logits
    assert (expected - bare).abs().max() > 1.0  # the prefix does something
    base = reference.get_base_model()

    pm = softprompt.load(base, tmp_path / "adapter", tokenizer=tokenizer).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(**ids).logits, expected, atol=1e-5, rtol=1e-5)
    pm.export(tmp_path / "back", format="peft")
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["token_dim"], config["num_attention_heads"]) == (3 * 64, 3)  # head_dim x key/value heads
    pm.detach()
    again = peft.PeftModel.from_pretrained(base, tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**ids, use_cache=False).logits, expected, atol=1e-5, rtol=1e-5)
