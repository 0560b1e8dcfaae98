"""The family table drives the test matrix: every family in it has a tiny model, and its facts hold on that model."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
from conftest import CONFIGS, FAMILIES, LM_CLASS, build

from softprompt._families import FAMILIES as TABLE
from softprompt._families import attention_stacks, family_of


def test_every_family_in_the_table_has_a_tiny_model_in_the_matrix():
    assert set(CONFIGS) == set(TABLE) == set(LM_CLASS)


@pytest.mark.parametrize("family", FAMILIES)
def test_table_facts_hold_on_the_tiny_model(family):
    model = build(family)
    fact = family_of(model)
    if fact.offset_after_pad:  # RoBERTa: positions from the config's pad id + 1
        assert fact.position_offset == model.config.pad_token_id + 1
        assert fact == replace(TABLE[family], position_offset=fact.position_offset)
    else:
        assert fact is TABLE[family]
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    assert (fact.position_offset is not None) <= takes_positions
    if fact.position_limit is not None:
        assert getattr(model.config, fact.position_limit) > 0
    stacks = attention_stacks(model) if not fact.prefix_unsupported else {}
    if fact.prefix_unsupported:
        assert not fact.stacks
    else:
        assert set(stacks) == set(fact.stacks)
        assert all(shape.num_layers == 2 for shape in stacks.values())
    assert fact.reuses_prompt_kv == (fact.layout == "decoder")
    assert fact.outputs_follow_input == (fact.layout != "encoder-decoder")


def test_an_unknown_family_is_named_with_the_supported_ones():
    import transformers as T

    model = T.GPTNeoForCausalLM(T.GPTNeoConfig(num_layers=1, hidden_size=8, num_heads=2, attention_types=[[["global"], 1]],
                                               vocab_size=10, max_position_embeddings=16))
    with pytest.raises(ValueError, match="gpt_neo.*not supported.*gpt2"):
        family_of(model)


@pytest.mark.parametrize("pad", [0, 1, 5])
def test_roberta_positions_follow_the_configs_pad_id(pad):
    """RoBERTa numbers positions from pad_token_id + 1; soft tokens before the input are numbered as its own
    inputs_embeds path numbers them."""
    import torch

    import softprompt

    model = build("roberta", pad_token_id=pad)
    pm = softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=3))
    ids = torch.tensor([[1, 7, 8, 9, 10]])
    with torch.no_grad():
        pm.tasks["default"].input_prompt.encoder.weight.normal_()
        soft = pm.tasks["default"].input_prompt.encoder.weight[None]  # (1, P, H)
        expected = model(inputs_embeds=torch.cat([soft, model.get_input_embeddings()(ids)], dim=1)).logits[:, 3:]
        torch.testing.assert_close(pm(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
