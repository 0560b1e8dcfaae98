"""The two real pretrained models that install from PyPI: MiniLM (encoder) and SmolLM2 (causal LM)."""

from __future__ import annotations

import pytest
import torch

import softprompt

pytestmark = pytest.mark.slow


def _load(name):
    from softprompt.models import ModelError, load_model

    try:
        return load_model(name)
    except ModelError as error:
        pytest.skip(str(error))


def test_minilm_p_tuning_v2_learns_a_toy_task():
    model, tok = _load("minilm")
    torch.manual_seed(0)
    config = softprompt.PTuningV2Config(num_virtual_tokens=8, head="sequence-classification", labels=["neg", "pos"])
    pm = softprompt.attach(model, config, tokenizer=tok)
    texts = ["I love this, wonderful", "great and lovely day", "terrible, I hate it", "awful and sad news"] * 2
    labels = torch.tensor([1, 1, 0, 0] * 2)
    batch = pm.tokenize(texts)
    optimizer = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-2)
    pm.train()
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = pm(**batch, labels=labels).loss
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
    pm.eval()
    with torch.no_grad():
        predictions = pm(**batch).logits.argmax(-1)
    assert loss.item() < first * 0.5
    assert torch.equal(predictions, labels)
    assert pm.num_trainable_parameters() == 8 * 6 * 2 * 384 + 384 * 2 + 2


def test_smollm2_prefix_generation_matches_the_uncached_loop():
    model, tok = _load("smollm2")
    torch.manual_seed(0)
    pm = softprompt.attach(model, softprompt.PrefixTuningConfig(num_virtual_tokens=5, init_text="table-to-text:"),
                           tokenizer=tok)
    batch = pm.tokenize(["name[The Eagle], food[French]", "name[Alimentum]"])
    out = pm.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        for step in range(4):
            logits = pm(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, atol=1e-4, rtol=1e-4)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(out.sequences, ids)
    with pm.disabled():
        plain = pm.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert not torch.allclose(plain.logits[0], out.logits[0], atol=1e-3)
