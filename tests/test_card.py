"""The model card every export folder carries: Hub-format front matter, the prompt's facts, the run's data."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build, pad
from huggingface_hub import ModelCard

import softprompt
from softprompt.card import RunInfo, model_card


def test_export_writes_a_card_the_hub_reads(tmp_path):
    model = build("gpt2")
    model.name_or_path = "org/tiny-gpt2"
    pm = softprompt.attach(model, softprompt.PrefixTuningConfig(num_virtual_tokens=3, projection_hidden_size=16))
    pm.add_task("sst2", softprompt.PTuningV2Config(num_virtual_tokens=2, head="sequence-classification",
                                                   labels=["neg", "pos"]))
    pm.export(tmp_path / "prompt")
    card = ModelCard.load(tmp_path / "prompt" / "README.md")
    assert card.data.library_name == "softprompt"
    assert card.data.base_model == "org/tiny-gpt2"
    assert card.data.tags == ["softprompt", "p-tuning-v2", "prefix-tuning"]
    # GPT-2 tiny: 2 layers x 2 x 32 wide keys and values per prefix position, plus a 32 -> 2 head.
    assert "| default | prefix-tuning | 3 | keys and values in every attention layer | – | – | 384 |" in card.text
    assert "| sst2 | p-tuning-v2 | 2 | keys and values in every attention layer | sequence-classification | neg, pos | 322 |" \
        in card.text
    assert "Data and metrics were not recorded" in card.text


def test_card_without_a_known_base_model_leaves_it_out():
    text = model_card(base_model=None, tasks={"default": softprompt.PromptTuningConfig(num_virtual_tokens=4).to_dict()},
                      num_parameters={"default": 128})
    front = text.split("---")[1]
    assert "base_model" not in front and "library_name: softprompt" in front
    assert "whose name was not recorded" in text


def test_card_carries_the_runs_data_and_metrics():
    run = RunInfo(data="sst2/train.tsv", examples=2000, steps=189, metrics={"dev accuracy": 0.808})
    config = softprompt.PTuningV2Config(num_virtual_tokens=16, layers=[2, 4]).to_dict()
    text = model_card(base_model="minilm", tasks={"default": config}, num_parameters={"default": 100}, run=run)
    card = ModelCard(text)
    assert card.data.metrics == ["dev accuracy"]
    for line in ("- data: sst2/train.tsv", "- examples: 2000", "- steps: 189", "| dev accuracy | 0.808 |",
                 "keys and values in attention layers 2 to 3"):
        assert line in card.text


def test_save_has_no_card_and_load_ignores_the_card(tmp_path):
    pm = softprompt.attach(build("gpt2"), softprompt.PromptTuningConfig(num_virtual_tokens=3)).eval()
    pm.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "README.md").exists()
    pm.export(tmp_path / "prompt")
    (tmp_path / "prompt" / "README.md").write_text("---\nnot: [valid yaml\n---\nanything")
    batch = pad([[5, 6, 7]], left=True)
    loaded = softprompt.load(build("gpt2"), tmp_path / "prompt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, pm(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("format", ["softprompt", "peft"])
def test_every_export_format_has_a_card(format, tmp_path):
    pm = softprompt.attach(build("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=3))
    pm.export(tmp_path / "out", format=format, run=RunInfo(metrics={"loss": 1.5}))
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == ("peft" if format == "peft" else "softprompt")
    assert "softprompt" in card.data.tags and "| loss | 1.5 |" in card.text


def test_a_training_runs_exports_carry_its_data_and_dev_scores(tmp_path):
    import _tiny

    from softprompt.train import TrainArgs, train

    data, dev = _tiny.sentiment(tmp_path / "train.jsonl"), _tiny.sentiment(tmp_path / "dev.jsonl", 16, seed=1)
    train(TrainArgs(method="p-tuning-v2", model=str(_tiny.bert(tmp_path / "bert")), data=str(data), dev=str(dev),
                    out=str(tmp_path / "run"), num_virtual_tokens=2, max_steps=4, batch_size=16, eval_every=2))
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in events if e["event"] == "eval"][-1]
    for folder in ("prompt", "best"):
        card = ModelCard.load(tmp_path / "run" / folder / "README.md")
        assert f"- data: {data}" in card.text and "- examples: 64" in card.text
        assert card.data.metrics and all(name.startswith("dev ") for name in card.data.metrics)
    final = ModelCard.load(tmp_path / "run" / "prompt" / "README.md")
    assert "- steps: 4" in final.text and f"| dev accuracy | {last['accuracy']:.4g} |" in final.text
