"""describe() of softprompt and PEFT folders; nearest vocabulary tokens of soft tokens (Lester et al. §7)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import build

import softprompt
from softprompt.inspect import describe, nearest, nearest_table

KEYS = {"folder", "format", "exported", "base_model", "tasks", "num_parameters", "tensors", "model_card",
        "size_on_disk_bytes"}


def test_describe_softprompt_folders(tmp_path):
    pm = softprompt.attach(build("gpt2"), softprompt.PrefixTuningConfig(num_virtual_tokens=3, projection_hidden_size=16))
    pm.save(tmp_path / "ckpt")
    pm.export(tmp_path / "prompt")
    saved, exported = describe(tmp_path / "ckpt"), describe(tmp_path / "prompt")
    assert set(saved) == set(exported) == KEYS
    assert (saved["exported"], exported["exported"]) == (False, True)
    assert (saved["model_card"], exported["model_card"]) == (False, True)
    assert exported["tensors"] == {"default.deep_prompt.encoders.decoder.weight": [3, 128]}
    assert exported["num_parameters"] == {"default": 384}
    assert saved["num_parameters"] == {"default": 3 * 32 + 32 * 16 + 16 + 16 * 128 + 128}
    assert exported["base_model"]["model_type"] == "gpt2" and exported["tasks"]["default"]["method"] == "prefix-tuning"
    json.dumps(saved), json.dumps(exported)  # JSON-able


def test_describe_peft_folder_like_a_softprompt_one(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
    peft.get_peft_model(build("t5"), config).save_pretrained(tmp_path / "adapter")
    summary = describe(tmp_path / "adapter")
    assert set(summary) == KEYS | {"peft"}
    assert summary["format"] == "peft" and summary["exported"] is True
    assert summary["peft"]["peft_type"] == "PROMPT_TUNING" and summary["peft"]["num_transformer_submodules"] == 2
    assert summary["tensors"] == {"prompt_embeddings": [8, 32]}
    assert summary["num_parameters"] == {"default": 4 * 32}  # only the first submodule's rows enter T5
    assert summary["tasks"]["default"] == softprompt.PromptTuningConfig(num_virtual_tokens=4).to_dict()
    assert summary["model_card"] is True  # PEFT writes one too
    json.dumps(summary)


def test_describe_refuses_other_folders(tmp_path):
    with pytest.raises(softprompt.CheckpointError, match="not a softprompt folder"):
        describe(tmp_path)


@pytest.fixture
def tokenizer(tmp_path):
    from _tiny import gpt2

    return T.AutoTokenizer.from_pretrained(gpt2(tmp_path / "tiny"))


def test_nearest_finds_the_token_a_soft_token_was_set_to(tokenizer):
    model = build("gpt2")
    pm = softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=3), tokenizer=tokenizer)
    pm.add_task("prefix", softprompt.PrefixTuningConfig(num_virtual_tokens=2))
    embeddings = model.get_input_embeddings().weight.detach()  # (V, H)
    good, movie = tokenizer.convert_tokens_to_ids(["good", "movie"])
    with torch.no_grad():
        table = pm.tasks["default"].input_prompt.encoder.weight
        table[0] = embeddings[good]
        table[1] = 3.0 * embeddings[movie]  # cosine ignores the length
        table[2] = torch.randn(32, generator=torch.Generator().manual_seed(0))
    result = nearest(pm, k=4)
    tokens = result["tasks"]["default"]["tokens"]
    assert [t["position"] for t in tokens] == [0, 1, 2]
    assert tokens[0]["nearest"][0] == {"id": good, "token": "good", "cosine": pytest.approx(1.0, abs=1e-6)}
    assert tokens[1]["nearest"][0]["token"] == "movie"
    assert tokens[1]["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    # The random row against a cosine computed token by token.
    expected = [float(torch.nn.functional.cosine_similarity(table[2].detach(), row, dim=0)) for row in embeddings]
    top = sorted(range(len(expected)), key=lambda i: -expected[i])[:4]
    assert [n["id"] for n in tokens[2]["nearest"]] == top
    assert [n["cosine"] for n in tokens[2]["nearest"]] == pytest.approx([expected[i] for i in top], abs=1e-5)
    assert result["tasks"]["prefix"]["applies"] is False and "attention layers" in result["tasks"]["prefix"]["reason"]
    json.dumps(result)

    text = nearest_table(result)
    assert "task default (prompt-tuning): 4 nearest vocabulary tokens" in text
    assert "    0  good (1.000)" in text and "    1  movie (1.000)" in text
    assert "task prefix (prefix-tuning): its prompt is keys and values" in text


def test_nearest_without_tokenizer_gives_ids_and_checks_k():
    pm = softprompt.attach(build("bert"), softprompt.PromptTuningConfig(num_virtual_tokens=2))
    with torch.no_grad():
        pm.tasks["default"].input_prompt.encoder.weight[1] = pm.base_model.get_input_embeddings().weight[42]
    result = nearest(pm, k=500)
    assert result["k"] == 96  # the whole vocabulary
    best = result["tasks"]["default"]["tokens"][1]["nearest"][0]
    assert (best["id"], best["token"]) == (42, None)
    assert "    1  42 (1.000)" in nearest_table(result)
    with pytest.raises(ValueError, match="k must be >= 1"):
        nearest(pm, k=0)
