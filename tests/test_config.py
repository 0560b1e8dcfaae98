"""Configs: the papers' defaults, validation with clear messages, and round trips through dicts."""

from __future__ import annotations

import pytest

import softprompt
from softprompt.config import config_from_dict


def test_papers_defaults():
    assert softprompt.PromptTuningConfig().init == "random"
    assert softprompt.PTuningConfig().encoder == "lstm"
    prefix = softprompt.PrefixTuningConfig()
    assert (prefix.num_virtual_tokens, prefix.projection_hidden_size) == (10, 512)
    v2 = softprompt.PTuningV2Config()
    assert v2.projection_hidden_size is None and v2.prefix_dropout == 0.1


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: softprompt.PromptTuningConfig(num_virtual_tokens=0), "num_virtual_tokens must be >= 1"),
        (lambda: softprompt.PromptTuningConfig(init="text"), "needs init_text"),
        (lambda: softprompt.PromptTuningConfig(init="labels"), "needs label_words"),
        (lambda: softprompt.PromptTuningConfig(placement="middle"), "placement="),
        (lambda: softprompt.PrefixTuningConfig(prefix_dropout=1.5), "prefix_dropout"),
        (lambda: softprompt.PrefixTuningConfig(stacks=["middle"]), "stacks"),
        (lambda: softprompt.PTuningV2Config(layers=(3, 1)), "layers must be a range"),
        (lambda: softprompt.PTuningV2Config(head="regression"), "is not a head"),
        (lambda: softprompt.PTuningV2Config(head="sequence-classification"), "needs num_labels or labels"),
        (lambda: softprompt.PromptTuningConfig(labels=["a", "b"], label_words=["x"]), "one word per label"),
        (lambda: softprompt.PromptTuningConfig(label_words={"a": "x"}, labels=["a", "b"]), "no word for labels"),
    ],
)
def test_invalid_configs_name_the_problem(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    "config",
    [
        softprompt.PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="hi", placement="suffix"),
        softprompt.PTuningConfig(template="[P:2] {a} and {b} [P] [MASK]", label_words={"x": "yes", "y": "no"}),
        softprompt.PrefixTuningConfig(init_text="table-to-text:", stacks=["encoder"]),
        softprompt.PTuningV2Config(layers=(1, 3), head="token-classification", labels=["O", "B-PER"]),
    ],
)
def test_round_trip_through_a_dict(config):
    assert config_from_dict(config.to_dict()) == config


def test_unknown_method_and_fields_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        config_from_dict({"method": "lora"})
    with pytest.raises(ValueError, match="unknown fields"):
        config_from_dict({"method": "prompt-tuning", "rank": 8})


def test_unsupported_model_type_names_the_supported_ones():
    import transformers as T

    model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                                 intermediate_size=32, vocab_size=50))
    with pytest.raises(ValueError, match="gpt_neox.*not supported.*bert.*gpt2"):
        softprompt.attach(model, softprompt.PromptTuningConfig())
