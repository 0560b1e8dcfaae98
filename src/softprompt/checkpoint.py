"""Saving, loading and exporting prompts.

A prompt folder holds ``softprompt.json`` (format version, the base model's fingerprint, each
task's config, whether it is an export) and ``prompts.safetensors`` (every task's parameters and
buffers: reparameterization, head, label-word ids). ``save`` keeps the full trainable state, so
training resumes exactly; ``export`` runs each reparameterization once and keeps its output as a
plain table, the smallest thing inference needs. A folder is written beside its destination and
moved into place in one rename, so an interrupted save never leaves a half-written prompt. Loading
onto another base model (other sizes, vocabulary or weights) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .card import Format, RunInfo, model_card
from .config import config_from_dict
from .model import PromptModel
from .models import fingerprint

FORMAT_VERSION = 1
META = "softprompt.json"
TENSORS = "prompts.safetensors"
CARD = "README.md"  # the model card of an export; loading ignores it


class CheckpointError(ValueError):
    pass


def replace_folder(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`; any old `target` goes only once the new one is in place.

    A kill between the two renames leaves the old folder at ``.<name>.old``, never half a folder.
    """
    if target.exists():
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def _write_atomically(directory: Path, meta: dict, tensors: dict[str, torch.Tensor], card: str | None = None) -> None:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / TENSORS)
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        if card is not None:
            (staging / CARD).write_text(card)
        replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _meta(pm: PromptModel, configs: dict, exported: bool, tensors: dict[str, torch.Tensor]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "exported": exported,
        "base_model": fingerprint(pm.base_model),
        "tasks": {name: config.to_dict() for name, config in configs.items()},
        "num_parameters": {name: sum(v.numel() for k, v in tensors.items() if k.split(".")[0] == name) for name in configs},
    }


def save(pm: PromptModel, directory: str | Path) -> None:
    """The full trainable state of every task."""
    tensors = dict(pm.tasks.state_dict())
    _write_atomically(Path(directory), _meta(pm, {n: t.config for n, t in pm.tasks.items()}, False, tensors), tensors)


@torch.no_grad()
def export(pm: PromptModel, directory: str | Path, format: Format = "softprompt", run: RunInfo | None = None) -> None:
    """Inference-only prompts: every reparameterization folded into a plain table, with a model card.

    ``format="peft"`` writes a PEFT prompt adapter instead (see :mod:`softprompt.peft_format`).
    """
    if format == "peft":
        from .peft_format import export as export_peft

        return export_peft(pm, directory, run=run)
    if format != "softprompt":
        raise ValueError(f"format={format!r}; use 'softprompt' or 'peft'")
    was_training = pm.training
    pm.eval()
    tensors: dict[str, torch.Tensor] = {}
    configs = {}
    try:
        for name, task in pm.tasks.items():
            configs[name] = task.config.exported()
            if task.input_prompt is not None:
                tensors[f"{name}.input_prompt.encoder.weight"] = task.input_prompt.encoder()
            if task.deep_prompt is not None:
                for stack, encoder in task.deep_prompt.encoders.items():
                    tensors[f"{name}.deep_prompt.encoders.{stack}.weight"] = encoder()
            for key, value in task.state_dict().items():
                if key.startswith(("head.", "label_word_ids")):
                    tensors[f"{name}.{key}"] = value
    finally:
        pm.train(was_training)
    meta = _meta(pm, configs, True, tensors)
    card = model_card(base_model=getattr(pm.base_model, "name_or_path", None) or None, tasks=meta["tasks"],
                      num_parameters=meta["num_parameters"], run=run)
    _write_atomically(Path(directory), meta, tensors, card)


def read_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / TENSORS).is_file():
        raise CheckpointError(f"{directory} is not a softprompt folder: it needs {META} and {TENSORS}")
    meta = json.loads((directory / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: format version {meta.get('format_version')}, this softprompt reads {FORMAT_VERSION}")
    return meta


def check_base(meta: dict, model: nn.Module, directory: Path) -> None:
    saved, here = meta["base_model"], fingerprint(model)
    differences = [f"{key}: saved {saved.get(key)!r}, this model {here.get(key)!r}" for key in saved if saved.get(key) != here.get(key)]
    if differences:
        raise CheckpointError(
            f"{directory} was trained on another base model; refusing to apply it here ("
            + "; ".join(differences)
            + "). Load it onto the model it was trained with."
        )


def load(model: nn.Module, directory: str | Path, tokenizer=None) -> PromptModel:
    """A PromptModel with the saved (or exported) tasks on `model`; a PEFT prompt adapter folder loads as one exported task."""
    directory = Path(directory)
    if not (directory / META).is_file():
        from .peft_format import is_peft_folder, load as load_peft

        if is_peft_folder(directory):
            return load_peft(model, directory, tokenizer=tokenizer)
    meta = read_meta(directory)
    check_base(meta, model, directory)
    configs = {name: config_from_dict(data) for name, data in meta["tasks"].items()}
    pm = PromptModel(model, None, tokenizer=tokenizer)
    for name, config in configs.items():
        pm.add_task(name, config, initialize=False)
    tensors = load_file(directory / TENSORS)
    expected = pm.tasks.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: tensors do not match the configs (missing {missing}, unexpected {unexpected})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{directory}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    pm.tasks.load_state_dict(tensors)
    return pm
