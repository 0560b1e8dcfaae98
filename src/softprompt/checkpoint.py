"""Saving, loading and exporting prompts.

A prompt folder holds ``softprompt.json`` (format version, the base model's fingerprint, each
task's config, whether it is an export) and ``prompts.safetensors`` (every task's parameters and
buffers: reparameterization, head, label-word ids). ``save`` keeps the full trainable state, so
training resumes exactly; ``export`` runs each reparameterization once and keeps its output as a
plain table, the smallest thing inference needs. A folder is written beside its destination as
``.<name>.new`` and published by renames (the old folder waits at ``.<name>.old`` until the new one
is in place); :func:`recover_folder` finishes or rolls back a publish that a kill interrupted. A
folder that holds anything but a prompt is never written over, and a damaged or foreign prompt is
refused with a message naming the file: loading onto another base model (other sizes, vocabulary
or weights) is refused too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .card import Format, RunInfo, model_card
from .config import config_from_dict
from .errors import CheckpointError, UserError
from .model import PromptModel
from .models import fingerprint

FORMAT_VERSION = 1
META = "softprompt.json"
TENSORS = "prompts.safetensors"
CARD = "README.md"  # the model card of an export; loading ignores it


def staging_folder(target: Path) -> Path:
    """Where a new version of `target` is written before it is published."""
    return target.with_name(f".{target.name}.new")


def replace_folder(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`; any old `target` goes only once the new one is in place.

    A kill between the two renames leaves the old folder at ``.<name>.old`` (and the new one at
    `staging`); :func:`recover_folder` puts things right on the next start.
    """
    retired = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def recover_folder(target: Path, complete: Callable[[Path], bool]) -> str | None:
    """Finish or roll back a publish of `target` that a kill interrupted; says what it did, if anything.

    A complete ``.<name>.new`` beside a missing `target` was about to be published: it is. Else a
    ``.<name>.old`` beside a missing `target` is the last good version: it goes back. Leftovers
    beside a present `target` (a half-written ``.new``, a retired ``.old``) are removed.
    """
    new, old = staging_folder(target), target.with_name(f".{target.name}.old")
    done = None
    if not target.exists():
        if new.is_dir() and complete(new):
            os.replace(new, target)
            done = f"finished publishing {target} (the previous run was stopped while publishing it)"
        elif old.is_dir():
            os.replace(old, target)
            done = f"restored {target} from {old.name} (the previous run was stopped while replacing it)"
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
            done = done or f"removed {leftover.name}, left half-written by a stopped run"
    return done


def is_prompt_folder(directory: Path) -> bool:
    """Whether `directory` holds a complete prompt (the metadata is written after the tensors)."""
    return (directory / META).is_file() and (directory / TENSORS).is_file()


def _check_target(directory: Path, own: set[str]) -> None:
    """Refuse to write over anything but a folder holding only the files named in `own`."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a folder; save the prompt to a new folder")
    if directory.is_dir():
        other = sorted(p.name for p in directory.iterdir() if p.name not in own)
        if other:
            shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
            raise CheckpointError(f"{directory} holds files that are not a prompt's ({shown}); "
                                  f"nothing was written: save to a new or empty folder")


def write_folder(directory: str | Path, files: dict[str, Callable[[Path], None]], last: str) -> None:
    """Write a folder of `files` (name -> writer of that path) beside `directory` and move it into place.

    `last` is written after the others, so its presence marks the folder complete; a folder holding
    anything else is refused, and an interrupted earlier publish is finished or rolled back first.
    """
    directory = Path(directory)
    _check_target(directory, set(files) | {CARD})
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(directory, lambda folder: (folder / last).is_file())
    staging = staging_folder(directory)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, write in sorted(files.items(), key=lambda item: item[0] == last):
            write(staging / name)
        replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_atomically(directory: Path, meta: dict, tensors: dict[str, torch.Tensor], card: str | None = None) -> None:
    files = {
        TENSORS: lambda path: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path),
        META: lambda path: path.write_text(json.dumps(meta, indent=2) + "\n"),
    }
    if card is not None:
        files[CARD] = lambda path: path.write_text(card)
    write_folder(directory, files, last=META)


def _meta(pm: PromptModel, configs: dict, exported: bool, tensors: dict[str, torch.Tensor]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "exported": exported,
        "base_model": fingerprint(pm.base_model),
        "tasks": {name: config.to_dict() for name, config in configs.items()},
        "num_parameters": {name: sum(v.numel() for k, v in tensors.items() if k.split(".")[0] == name) for name in configs},
    }


def save(pm: PromptModel, directory: str | Path) -> None:
    """The full trainable state of every task, into a new, empty or earlier prompt folder."""
    tensors = dict(pm.tasks.state_dict())
    _write_atomically(Path(directory), _meta(pm, {n: t.config for n, t in pm.tasks.items()}, False, tensors), tensors)


@torch.no_grad()
def export(pm: PromptModel, directory: str | Path, format: Format = "softprompt", run: RunInfo | None = None) -> None:
    """Inference-only prompts: every reparameterization folded into a plain table, with a model card, into a new,
    empty or earlier prompt folder.

    ``format="peft"`` writes a PEFT prompt adapter instead (see :mod:`softprompt.peft_format`).
    """
    if format == "peft":
        from .peft_format import export as export_peft

        return export_peft(pm, directory, run=run)
    if format != "softprompt":
        raise UserError(f"format={format!r}; use 'softprompt' or 'peft'")
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


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checked contents of a prompt folder's ``softprompt.json``."""
    directory = Path(directory)
    if not is_prompt_folder(directory):
        raise CheckpointError(f"{directory} is not a softprompt folder: it needs {META} and {TENSORS} "
                              "(or adapter_config.json, for a PEFT prompt adapter)")
    path = directory / META
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {exc}); save or train the prompt again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is damaged: it holds a {type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')!r}, this softprompt reads {FORMAT_VERSION}")
    expected = {"base_model": dict, "tasks": dict}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            found = "missing" if key not in meta else f"a {type(meta[key]).__name__}"
            raise CheckpointError(f"{path} is damaged: {key!r} is {found}, expected an object; save or train the prompt again")
    for name, task in meta["tasks"].items():
        if not isinstance(task, dict) or not isinstance(task.get("method"), str):
            raise CheckpointError(f"{path} is damaged: task {name!r} has no method config; save or train the prompt again")
        try:
            config_from_dict(task)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} is damaged: task {name!r}: {exc}; save or train the prompt again") from None
    return meta


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a prompt folder; a damaged file is a :class:`CheckpointError` naming it."""
    path = Path(directory) / TENSORS
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); save or train the prompt again") from None


def check_base(meta: dict, model: nn.Module, directory: Path) -> None:
    saved, here = meta["base_model"], fingerprint(model)
    # Keys a newer fingerprint adds are compared only when the prompt was saved with them.
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
    configs = {name: config_from_dict(data) for name, data in meta["tasks"].items()}  # checked by read_meta
    pm = PromptModel(model, None, tokenizer=tokenizer)
    for name, config in configs.items():
        pm.add_task(name, config, initialize=False)
    tensors = read_tensors(directory)
    expected = pm.tasks.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: tensors do not match the configs (missing {missing}, unexpected {unexpected})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{directory}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    pm.tasks.load_state_dict(tensors)
    return pm
