"""The saved artifact, pinned: tensor names, parameter counts, atomic writes, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import build, method_config

import softprompt

# GPT-2 tiny: 2 layers, hidden 32 (4 heads of 8); P = 3.
PINNED = {
    "prompt-tuning": ({"default.input_prompt.encoder.weight": (3, 32)}, 96),
    "p-tuning": (
        {
            "default.input_prompt.encoder.embedding": (3, 32),
            "default.input_prompt.encoder.lstm.weight_ih_l0": (64, 32),
            "default.input_prompt.encoder.lstm.weight_hh_l0": (64, 16),
            "default.input_prompt.encoder.lstm.bias_ih_l0": (64,),
            "default.input_prompt.encoder.lstm.bias_hh_l0": (64,),
            "default.input_prompt.encoder.lstm.weight_ih_l0_reverse": (64, 32),
            "default.input_prompt.encoder.lstm.weight_hh_l0_reverse": (64, 16),
            "default.input_prompt.encoder.lstm.bias_ih_l0_reverse": (64,),
            "default.input_prompt.encoder.lstm.bias_hh_l0_reverse": (64,),
            "default.input_prompt.encoder.lstm.weight_ih_l1": (64, 32),
            "default.input_prompt.encoder.lstm.weight_hh_l1": (64, 16),
            "default.input_prompt.encoder.lstm.bias_ih_l1": (64,),
            "default.input_prompt.encoder.lstm.bias_hh_l1": (64,),
            "default.input_prompt.encoder.lstm.weight_ih_l1_reverse": (64, 32),
            "default.input_prompt.encoder.lstm.weight_hh_l1_reverse": (64, 16),
            "default.input_prompt.encoder.lstm.bias_ih_l1_reverse": (64,),
            "default.input_prompt.encoder.lstm.bias_hh_l1_reverse": (64,),
            "default.input_prompt.encoder.mlp.0.weight": (16, 32),
            "default.input_prompt.encoder.mlp.0.bias": (16,),
            "default.input_prompt.encoder.mlp.2.weight": (32, 16),
            "default.input_prompt.encoder.mlp.2.bias": (32,),
        },
        96 + 4 * (2048 + 1024 + 128) + 512 + 16 + 512 + 32,
    ),
    "prefix-tuning": (
        {
            "default.deep_prompt.encoders.decoder.embedding": (3, 32),
            "default.deep_prompt.encoders.decoder.mlp.0.weight": (16, 32),
            "default.deep_prompt.encoders.decoder.mlp.0.bias": (16,),
            "default.deep_prompt.encoders.decoder.mlp.2.weight": (128, 16),
            "default.deep_prompt.encoders.decoder.mlp.2.bias": (128,),
        },
        96 + 512 + 16 + 2048 + 128,
    ),
    "p-tuning-v2": ({"default.deep_prompt.encoders.decoder.weight": (3, 128)}, 384),
}


@pytest.mark.parametrize("method", list(PINNED))
def test_saved_tensor_names_and_counts_are_pinned(method, tmp_path):
    pm = softprompt.attach(build("gpt2"), method_config(method, 3))
    pm.save(tmp_path / "ckpt")
    names, count = PINNED[method]
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "ckpt" / "prompts.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == names
    assert pm.num_trainable_parameters() == count
    meta = json.loads((tmp_path / "ckpt" / "softprompt.json").read_text())
    assert meta["num_parameters"] == {"default": count} and meta["exported"] is False


@pytest.mark.parametrize("method", list(PINNED))
def test_export_keeps_only_tables(method, tmp_path):
    pm = softprompt.attach(build("gpt2"), method_config(method, 3))
    pm.export(tmp_path / "export")
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "export" / "prompts.safetensors")
    input_level = method in ("prompt-tuning", "p-tuning")
    expected = {"default.input_prompt.encoder.weight": (3, 32)} if input_level else {
        "default.deep_prompt.encoders.decoder.weight": (3, 128)}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected


def test_heads_and_label_words_are_part_of_the_task(tmp_path):
    model = build("bert", auto=T.AutoModel)
    pm = softprompt.attach(model, softprompt.PTuningV2Config(num_virtual_tokens=2, head="sequence-classification", num_labels=3))
    pm.save(tmp_path / "a")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "a" / "prompts.safetensors")) == {
        "default.deep_prompt.encoders.encoder.weight", "default.head.classifier.weight", "default.head.classifier.bias"}


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    pm.save(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "prompts.safetensors").read_bytes()
    with torch.no_grad():
        pm.tasks["default"].input_prompt.encoder.weight.add_(1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(softprompt.checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        pm.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "prompts.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(softprompt.CheckpointError, match="not a softprompt folder"):
        softprompt.load(build("gpt2"), tmp_path / "empty")


def test_tampered_tensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    pm.save(tmp_path / "ckpt")
    save_file({"default.input_prompt.encoder.weight": torch.zeros(4, 32)}, tmp_path / "ckpt" / "prompts.safetensors")
    with pytest.raises(softprompt.CheckpointError, match="shape"):
        softprompt.load(build("gpt2"), tmp_path / "ckpt")


def test_saving_onto_a_folder_of_other_files_is_refused(tmp_path):
    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/important.txt").write_text("keep me")
    for write in (pm.save, pm.export):
        with pytest.raises(softprompt.CheckpointError, match="important.txt"):
            write(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["important.txt"]
    (tmp_path / "file").write_text("a file")
    with pytest.raises(softprompt.CheckpointError, match="is a file"):
        pm.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "a file"
    # A prompt folder (and an empty one) is written over, as a whole.
    pm.save(tmp_path / "ckpt")
    pm.export(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    pm.save(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "empty", "file", "mine"]


def test_an_interrupted_publish_is_finished_or_rolled_back(tmp_path):
    from softprompt.checkpoint import is_prompt_folder, recover_folder

    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    target = tmp_path / "best"
    pm.export(target)
    # Killed after `best -> .best.old`, before the new folder was complete: the old one comes back.
    (tmp_path / ".best.new").mkdir()
    (tmp_path / ".best.new/prompts.safetensors").write_bytes(b"half")
    target.rename(tmp_path / ".best.old")
    assert "restored" in recover_folder(target, is_prompt_folder)
    assert is_prompt_folder(target) and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    # Killed after `best -> .best.old` with the new folder complete: it is published.
    pm.export(tmp_path / "staged")
    (tmp_path / "staged").rename(tmp_path / ".best.new")
    target.rename(tmp_path / ".best.old")
    assert "finished" in recover_folder(target, is_prompt_folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    # Leftovers beside a whole folder go; nothing to do is None.
    (tmp_path / ".best.new").mkdir()
    assert "removed" in recover_folder(target, is_prompt_folder)
    assert recover_folder(target, is_prompt_folder) is None
    # A library save recovers first, so a leftover .old never shadows the folder.
    target.rename(tmp_path / ".best.old")
    pm.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize("content, expected", [
    (b"", "is damaged"), (None, "is damaged"),
])
def test_damaged_tensors_are_a_checkpoint_error(tmp_path, content, expected):
    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    pm.save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "prompts.safetensors"
    path.write_bytes(content if content is not None else path.read_bytes()[:-8])
    with pytest.raises(softprompt.CheckpointError, match=expected):
        softprompt.load(build("gpt2"), tmp_path / "ckpt")


@pytest.mark.parametrize("meta, expected", [
    ("[]", "holds a list"), ('{"format_version": 1}', "'base_model' is missing"),
    ('{"format_version": 1, "base_model": {}, "tasks": {"default": {"method": "prompt-tuning", "init": 3}}}', "init=3"),
    ('{"format_version": 1, "base_model": {}, "tasks": {"default": {"method": "prompt-tuning", "size": 3}}}', "unknown fields"),
])
def test_damaged_metadata_is_a_checkpoint_error(tmp_path, meta, expected):
    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning"))
    pm.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "softprompt.json").write_text(meta)
    with pytest.raises(softprompt.CheckpointError, match=expected):
        softprompt.load(build("gpt2"), tmp_path / "ckpt")
