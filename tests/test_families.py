"""The family table drives the test matrix: every family in it has a tiny model, and its facts hold on that model."""

from __future__ import annotations

import inspect

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
