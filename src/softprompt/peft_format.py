"""HuggingFace PEFT prompt adapters, read and written.

A PEFT prompt adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with a
single tensor, ``prompt_embeddings``, which PEFT computes at save time by running its encoder once
(the same folding as softprompt's export):

    PROMPT_TUNING, P_TUNING   (P * S, H)        S = num_transformer_submodules; only the first P rows
                                                 enter the (encoder) input, before every token
    PREFIX_TUNING             (P, L * 2 * KVH * D) laid out as (P, L, 2, KVH, D), with
                                                 token_dim = KVH * D under grouped-query attention

which is exactly how a softprompt export stores an input table (P, H) and a key/value prefix
(P, L * 2 * KVH * D), so converting is renaming and checking shapes, with one exception. For an
encoder-decoder (two submodules) PEFT repeats the L layers of its table once for cross-attention,
``[0, 1, ..., L-1, 0, 1, ..., L-1]``, cuts that list into L groups of four (self key, self value,
cross key, cross value), and then drops the cross-attention part: decoder layer i reads table
layer ``2i mod L`` (:func:`decoder_layers`). Reading gives a PromptModel
with one exported (inference-only) task; writing refuses, with the reason, what PEFT's
representation cannot hold: several tasks, heads, label words, templates, soft tokens elsewhere
than before the input, prefixes in encoder or cross-attention of encoder-decoders or in decoder
layers that PEFT gives one table layer, or in a range of layers. PEFT itself is not needed for
either direction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.models.auto import modeling_auto

from ._families import attention_stacks, family_of
from .card import RunInfo, model_card
from .checkpoint import CheckpointError, write_folder
from .config import PrefixTuningConfig, PromptTuningConfig, PTuningConfig, TaskConfig
from .model import DEFAULT_TASK, PromptModel

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
WEIGHTS_BIN = "adapter_model.bin"  # older PEFT versions, or safe_serialization=False
TENSOR = "prompt_embeddings"
CARD = "README.md"

INPUT_TYPES = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning"}
PREFIX_TYPE = "PREFIX_TUNING"
PEFT_TYPES = {**INPUT_TYPES, PREFIX_TYPE: "prefix-tuning"}

# PEFT picks its wrapper by task type. Its SEQ_CLS, TOKEN_CLS and QUESTION_ANS wrappers train and save the
# base model's own classifier (modules_to_save), which softprompt keeps frozen; FEATURE_EXTRACTION prepends
# the prompt and calls the model unchanged, which is what softprompt does for every other model class.
_TASK_TYPES = [
    ("CAUSAL_LM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    ("SEQ_2_SEQ_LM", modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
]


@dataclass
class Adapter:
    """A PEFT prompt adapter as stored: its config and its one table."""

    directory: Path
    config: dict[str, Any]
    table: torch.Tensor  # (P * S, H) or (P, L * 2 * KVH * D)

    @property
    def peft_type(self) -> str:
        return self.config["peft_type"]

    @property
    def num_tokens(self) -> int:
        return int(self.config["num_virtual_tokens"])

    @property
    def submodules(self) -> int:
        return int(self.config.get("num_transformer_submodules") or 1)

    @property
    def base_model(self) -> str:
        return self.config.get("base_model_name_or_path") or "an unnamed model"

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.directory}: PEFT {self.peft_type} adapter for {self.base_model}: {what}")


def is_peft_folder(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG).is_file()


# -- reading -------------------------------------------------------------------------------------
def read_adapter(directory: str | Path) -> Adapter:
    """The adapter in `directory`, its table's shape checked against its own config."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory / CONFIG} cannot be read as JSON ({error})") from error
    peft_type = config.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise CheckpointError(
            f"{directory} holds a PEFT {peft_type} adapter; softprompt reads PEFT's prompt adapters "
            f"({', '.join(PEFT_TYPES)})"
        )
    missing = [k for k in ("num_virtual_tokens", "token_dim", "num_layers") if not config.get(k)]
    if missing:
        raise CheckpointError(f"{directory / CONFIG} lacks {missing}; re-save the adapter with PEFT's save_pretrained")
    if (directory / WEIGHTS).is_file():
        tensors = load_file(directory / WEIGHTS)
    elif (directory / WEIGHTS_BIN).is_file():
        tensors = torch.load(directory / WEIGHTS_BIN, map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{directory} has {CONFIG} but neither {WEIGHTS} nor {WEIGHTS_BIN}")
    adapter = Adapter(directory, config, tensors.get(TENSOR, torch.empty(0)))
    others = sorted(set(tensors) - {TENSOR})
    if others or config.get("modules_to_save"):
        raise adapter.fail(
            f"it also holds trained modules of the base model ({others or config['modules_to_save']}); softprompt "
            "keeps the base model frozen and cannot carry them"
        )
    if TENSOR not in tensors:
        raise adapter.fail(f"its weights have no {TENSOR!r} tensor")
    width = adapter.config["token_dim"]
    if peft_type == PREFIX_TYPE:
        expected = (adapter.num_tokens, adapter.config["num_layers"] * 2 * width)
    else:
        expected = (adapter.num_tokens * adapter.submodules, width)
    if tuple(adapter.table.shape) != expected:
        raise adapter.fail(f"{TENSOR} has shape {tuple(adapter.table.shape)}, its config says {expected}")
    return adapter


def task_config(adapter: Adapter) -> TaskConfig:
    """The softprompt task (already exported: a plain table) that holds the adapter's prompt."""
    tokens = adapter.num_tokens
    if adapter.peft_type == "PROMPT_TUNING":
        return PromptTuningConfig(num_virtual_tokens=tokens)
    if adapter.peft_type == "P_TUNING":
        return PTuningConfig(num_virtual_tokens=tokens, encoder="none")
    # PEFT gives an encoder-decoder's prefix to the decoder self-attention only.
    seq2seq = adapter.submodules == 2 or adapter.config.get("task_type") == "SEQ_2_SEQ_LM"
    return PrefixTuningConfig(
        num_virtual_tokens=tokens, projection_hidden_size=None, stacks=["decoder"] if seq2seq else None
    )


def task_tensors(adapter: Adapter, model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's table under softprompt's tensor names, after checking that it fits `model`."""
    layout = family_of(model).layout
    if adapter.submodules != 1 and layout != "encoder-decoder":
        raise adapter.fail(
            f"it was saved for an encoder-decoder ({adapter.submodules} transformer submodules); "
            f"this {model.config.model_type} is a {layout} model"
        )
    width = adapter.config["token_dim"]
    if adapter.peft_type in INPUT_TYPES:
        hidden = model.get_input_embeddings().embedding_dim
        if width != hidden:
            raise adapter.fail(f"its soft tokens have width {width}, this {model.config.model_type} has hidden size {hidden}")
        # A second submodule's rows are saved by PEFT but never enter the model.
        return {"input_prompt.encoder.weight": adapter.table[: adapter.num_tokens]}
    if unsupported := family_of(model).prefix_unsupported:
        raise adapter.fail(unsupported)
    stack = "encoder" if layout == "encoder" else "decoder"
    shape = attention_stacks(model)[stack]
    theirs = (adapter.config["num_layers"], adapter.config.get("num_attention_heads"), width)
    ours = (shape.num_layers, shape.kv_heads, shape.kv_heads * shape.head_dim)
    if theirs != ours:
        raise adapter.fail(
            "its prefix is for {} layers of {} key/value heads (width {}); the {} self-attention of this {} has "
            "{} layers of {} key/value heads (width {}). Load it onto the model it was trained for".format(
                *theirs, stack, model.config.model_type, *ours
            )
        )
    table = adapter.table
    if layout == "encoder-decoder" and adapter.submodules == 2:
        layers = table.view(adapter.num_tokens, shape.num_layers, -1)  # (P, L, 2 * KVH * D)
        table = layers[:, decoder_layers(shape.num_layers)].reshape(adapter.num_tokens, -1)
    return {f"deep_prompt.encoders.{stack}.weight": table}


def decoder_layers(layers: int) -> list[int]:
    """For each decoder layer i of an encoder-decoder, the layer of PEFT's prefix table it reads: 2i mod L.

    With an even L, decoder layers i and i + L/2 read the same table layer and the odd table layers
    are never read (PEFT 0.21's ``get_prompt`` for ``num_transformer_submodules == 2``).
    """
    return [(2 * layer) % layers for layer in range(layers)]


def _peft_decoder_table(ours: torch.Tensor, layers: int) -> torch.Tensor:
    """(P, L * 2 * KVH * D) per decoder layer -> PEFT's table, each layer where PEFT's decoder reads it.

    Refused where two decoder layers that PEFT gives one table layer have different prefixes.
    """
    tokens = ours.shape[0]
    per_layer = ours.view(tokens, layers, -1)  # (P, L, 2 * KVH * D)
    table = torch.zeros_like(per_layer)  # table layers PEFT never reads stay zero
    readers: dict[int, list[int]] = {}
    for layer, read in enumerate(decoder_layers(layers)):
        readers.setdefault(read, []).append(layer)
    for read, group in readers.items():
        for other in group[1:]:
            if not torch.equal(per_layer[:, other], per_layer[:, group[0]]):
                raise CheckpointError(
                    f"PEFT cannot represent this prompt: PEFT's encoder-decoder prefix gives decoder layers "
                    f"{group[0]} and {other} of {layers} one prefix (decoder layer i reads layer 2i mod {layers} of "
                    f"its table), and this prompt's prefixes for them differ; keep it in softprompt's format"
                )
        table[:, read] = per_layer[:, group[0]]
    return table.reshape(tokens, -1)


def load(model: nn.Module, directory: str | Path, tokenizer=None, task: str = DEFAULT_TASK) -> PromptModel:
    """A PromptModel on `model` with the PEFT adapter in `directory` as exported task `task`.

    PEFT stores no fingerprint of the base model, so only what its config records (widths, layers,
    heads) can be checked; ``base_model_name_or_path`` is named in every error.
    """
    adapter = read_adapter(directory)
    tensors = task_tensors(adapter, model)
    config = task_config(adapter)
    pm = PromptModel(model, None, tokenizer=tokenizer)
    pm.add_task(task, config, initialize=False)
    expected = pm.tasks[task].state_dict()
    if set(expected) != set(tensors):
        raise adapter.fail(f"softprompt expects tensors {sorted(expected)} for it, the conversion gave {sorted(tensors)}")
    pm.tasks[task].load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return pm


# -- writing -------------------------------------------------------------------------------------
def _task_type(model: nn.Module) -> str:
    name = type(model).__name__
    for task_type, names in _TASK_TYPES:
        classes = {c for value in names.values() for c in ((value,) if isinstance(value, str) else value)}
        if name in classes:
            return task_type
    return "FEATURE_EXTRACTION"


def _refusal(pm: PromptModel, name: str) -> str | None:
    """Why PEFT's representation cannot hold task `name`, or None when it can."""
    task = pm.tasks[name]
    config = task.config
    if config.head is not None:
        return (f"task {name!r} has a fresh {config.head} head; a PEFT prompt adapter holds only the prompt "
                "(PEFT trains the base model's own classifier as modules_to_save instead)")
    if task.label_word_ids is not None:
        return f"task {name!r} scores label words; a PEFT prompt adapter has no verbalizer"
    if getattr(config, "template", None):
        return (f"P-Tuning template {config.template!r} places soft tokens among fields and anchor words; "
                "PEFT's P_TUNING puts every soft token before the input (train PTuningConfig(num_virtual_tokens=N) "
                "without a template to export for PEFT)")
    if getattr(config, "placement", "prefix") != "prefix":
        return f"placement={config.placement!r}; PEFT puts soft tokens before the input only (placement='prefix')"
    if task.deep_prompt is None:
        return None
    layout = family_of(pm.base_model).layout
    stacks = set(task.deep_prompt.encoders)
    if layout == "encoder-decoder" and stacks != {"decoder"}:
        return (f"task {name!r} has prefixes in the {sorted(stacks)} attention; PEFT's prefix for encoder-decoder "
                "models enters only the decoder self-attention (train with stacks=['decoder'] to export for PEFT)")
    layers = getattr(config, "layers", None)
    total = attention_stacks(pm.base_model)[next(iter(stacks))].num_layers
    if layers is not None and list(layers) != [0, total]:
        return (f"task {name!r} has prefixes in layers [{layers[0]}, {layers[1]}) of {total}; "
                "PEFT's PREFIX_TUNING holds a prefix for every layer")
    return None


@torch.no_grad()
def adapter_of(pm: PromptModel) -> tuple[dict[str, Any], torch.Tensor]:
    """PEFT's adapter_config.json fields and prompt_embeddings for the one task of `pm`."""
    names = list(pm.tasks)
    if len(names) != 1:
        raise CheckpointError(
            f"a PEFT adapter holds one prompt; this PromptModel has tasks {names} (softprompt's own format holds several)"
        )
    name = names[0]
    if reason := _refusal(pm, name):
        raise CheckpointError(f"PEFT cannot represent this prompt: {reason}")
    task = pm.tasks[name]
    model = pm.base_model
    was_training = task.training
    task.eval()  # folds without dropout
    try:
        if task.input_prompt is not None:
            table = task.input_prompt.encoder().detach().float()  # (P, H)
        else:
            table = next(iter(task.deep_prompt.encoders.values()))().detach().float()  # (P, L * 2 * KVH * D)
    finally:
        task.train(was_training)
    layout = family_of(model).layout
    hidden = model.get_input_embeddings().embedding_dim
    common = {
        "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
        "revision": None,
        "task_type": _task_type(model),
        "inference_mode": True,
        "modules_to_save": None,
        "auto_mapping": None,
        "num_virtual_tokens": task.config.num_virtual_tokens,
    }
    text_config = model.config.get_text_config()
    if task.input_prompt is not None:
        common.update(token_dim=hidden, num_layers=text_config.num_hidden_layers,
                      num_attention_heads=getattr(text_config, "num_attention_heads", None),
                      num_transformer_submodules=1)  # one submodule: PEFT's encoder-decoders use only the first P rows
        if task.config.method == "prompt-tuning":
            extra = {"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
                     "tokenizer_name_or_path": None, "tokenizer_kwargs": None}
        else:
            extra = {"peft_type": "P_TUNING",
                     "encoder_reparameterization_type": "LSTM" if task.config.encoder == "lstm" else "MLP",
                     "encoder_hidden_size": task.config.encoder_hidden_size or hidden, "encoder_num_layers": 2,
                     "encoder_dropout": 0.0}
    else:
        stack = next(iter(task.deep_prompt.encoders))
        shape = attention_stacks(model)[stack]
        width = shape.kv_heads * shape.head_dim
        common.update(token_dim=width, num_layers=shape.num_layers, num_attention_heads=shape.kv_heads,
                      num_transformer_submodules=2 if layout == "encoder-decoder" else 1)
        if layout == "encoder-decoder":
            table = _peft_decoder_table(table, shape.num_layers)
        extra = {"peft_type": PREFIX_TYPE, "encoder_hidden_size": width, "prefix_projection": False,
                 "init_weights": None}
    return {**common, **extra}, table


def export(pm: PromptModel, directory: str | Path, run: RunInfo | None = None) -> None:
    """Write `pm`'s one task as a PEFT prompt adapter that ``peft.PeftModel.from_pretrained`` loads.

    Like softprompt's own export, the folder is written beside `directory` and moved into place in
    one rename, with a model card; a folder holding other files is refused.
    """
    config, table = adapter_of(pm)
    name = next(iter(pm.tasks))
    card = model_card(
        base_model=config["base_model_name_or_path"],
        tasks={name: pm.tasks[name].config.exported().to_dict()},
        num_parameters={name: table.numel()},
        format="peft",
        run=run,
    )
    write_folder(directory, {
        WEIGHTS: lambda path: save_file({TENSOR: table.contiguous().cpu()}, path, metadata={"format": "pt"}),
        CARD: lambda path: path.write_text(card),
        CONFIG: lambda path: path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"),
    }, last=CONFIG)
