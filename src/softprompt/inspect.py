"""Looking into prompts: what a folder holds, and which words the soft tokens are closest to.

:func:`describe` summarises a softprompt folder (save or export) or a PEFT prompt adapter folder in
one JSON-able shape: format, base model, each task's config, parameters, tensors, size on disk.

:func:`nearest` interprets input-level soft tokens as Lester et al. (2021, §7) do: for each soft
token e_i (a row of the (P, H) table) the K vocabulary tokens v with the highest cosine similarity
cos(e_i, E_v) to the rows of the model's input embedding matrix E (V, H). Key/value prefixes
(Prefix-Tuning, P-Tuning v2) live inside the attention layers, in the space of each layer's keys
and values rather than of the input embeddings, so there is nothing to compare them with and
``nearest`` says so for those tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from . import peft_format
from .checkpoint import CARD, META, TENSORS, read_meta
from .model import PromptModel
from .errors import UserError

NOT_INPUT_LEVEL = (
    "its prompt is keys and values inside the attention layers, not vectors in the input embedding space, "
    "so it has no nearest vocabulary tokens"
)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def describe(folder: str | Path) -> dict[str, Any]:
    """A JSON-able summary of a softprompt folder or a PEFT prompt adapter folder."""
    folder = Path(folder)
    if not (folder / META).is_file() and peft_format.is_peft_folder(folder):
        adapter = peft_format.read_adapter(folder)
        config = peft_format.task_config(adapter)
        used = adapter.table[: adapter.num_tokens] if adapter.peft_type in peft_format.INPUT_TYPES else adapter.table
        return {
            "folder": str(folder),
            "format": "peft",
            "exported": True,
            "base_model": {key: adapter.config.get(key) for key in
                           ("base_model_name_or_path", "token_dim", "num_layers", "num_attention_heads")},
            "peft": {key: adapter.config.get(key) for key in
                     ("peft_type", "task_type", "peft_version", "num_transformer_submodules")},
            "tasks": {"default": config.to_dict()},
            "num_parameters": {"default": used.numel()},
            "tensors": {peft_format.TENSOR: list(adapter.table.shape)},
            "model_card": (folder / CARD).is_file(),
            "size_on_disk_bytes": _size(folder),
        }
    meta = read_meta(folder)
    with safe_open(folder / TENSORS, framework="pt") as tensors:
        shapes = {key: list(tensors.get_slice(key).get_shape()) for key in tensors.keys()}
    return {
        "folder": str(folder),
        "format": "softprompt",
        "exported": meta["exported"],
        "base_model": meta["base_model"],
        "tasks": meta["tasks"],
        "num_parameters": meta["num_parameters"],
        "tensors": shapes,
        "model_card": (folder / CARD).is_file(),
        "size_on_disk_bytes": _size(folder),
    }


@torch.no_grad()
def nearest(pm: PromptModel, k: int = 5, tokenizer=None) -> dict[str, Any]:
    """For every soft token of every task, the `k` vocabulary tokens nearest by cosine similarity.

    Returns ``{"k": k, "tasks": {name: {"method", "applies", "tokens": [{"position", "nearest":
    [{"id", "token", "cosine"}]}]}}}``; a task with key/value prefixes has ``applies: False`` and a
    ``reason`` instead of ``tokens``. Token strings come from `tokenizer` (default: the
    PromptModel's), else ``None``.
    """
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    tokenizer = tokenizer if tokenizer is not None else pm.tokenizer
    embeddings = pm.base_model.get_input_embeddings().weight.detach().float()  # (V, H)
    vocabulary = F.normalize(embeddings, dim=-1)
    k = min(k, embeddings.shape[0])
    result: dict[str, Any] = {"k": k, "tasks": {}}
    for name, task in pm.tasks.items():
        entry: dict[str, Any] = {"method": task.config.method}
        if task.input_prompt is None:
            result["tasks"][name] = {**entry, "applies": False, "reason": NOT_INPUT_LEVEL}
            continue
        was_training = task.training
        task.eval()
        try:
            table = task.input_prompt().detach().float().to(vocabulary.device)  # (P, H)
        finally:
            task.train(was_training)
        cosine = F.normalize(table, dim=-1) @ vocabulary.T  # (P, V)
        scores, ids = cosine.topk(k, dim=-1)  # (P, k)
        tokens = []
        for position in range(table.shape[0]):
            row = ids[position].tolist()
            words = tokenizer.convert_ids_to_tokens(row) if tokenizer is not None else [None] * len(row)
            tokens.append({
                "position": position,
                "nearest": [{"id": i, "token": w, "cosine": round(float(s), 6)}
                            for i, w, s in zip(row, words, scores[position].tolist())],
            })
        result["tasks"][name] = {**entry, "applies": True, "tokens": tokens}
    return result


def nearest_table(result: dict[str, Any]) -> str:
    """The output of :func:`nearest` as a readable text table, one line per soft token."""
    lines = []
    for name, entry in result["tasks"].items():
        if not entry["applies"]:
            lines.append(f"task {name} ({entry['method']}): {entry['reason']}")
            continue
        lines.append(f"task {name} ({entry['method']}): {result['k']} nearest vocabulary tokens by cosine similarity")
        for token in entry["tokens"]:
            cells = [f"{n['token'] if n['token'] is not None else n['id']!s} ({n['cosine']:.3f})" for n in token["nearest"]]
            lines.append(f"  {token['position']:>3}  " + "  ".join(cells))
    return "\n".join(lines)
