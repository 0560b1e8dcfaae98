"""PromptModel: prompts for many tasks on one frozen HuggingFace model.

``attach(model, config)`` freezes the model, points its attention at softprompt's attention
function and adds the first task. A forward takes the model's own inputs plus ``task`` (one name,
or one per row) and returns the model's own outputs: soft input tokens are assembled next to each
row's real tokens and mapped back out of sequence outputs, prefixes are handed to every attention
layer through per-module slots, positions are counted from the attention mask (so left padding
shifts nothing), and a fresh head or label words turn the hidden states or LM logits into class
scores.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from ._attention import ATTENTION, attention_of, set_attention, slot_of
from ._inputs import Assembled, assemble
from ._task import Base, Task
from .card import Format, RunInfo
from .config import TaskConfig
from .methods import METHODS
from .methods.p_tuning import render

DEFAULT_TASK = "default"


class PromptModel(nn.Module):
    def __init__(self, model: nn.Module, config: TaskConfig | None, tokenizer=None, task: str = DEFAULT_TASK) -> None:
        super().__init__()
        model.requires_grad_(False)
        self.base_model = model
        self.tokenizer = tokenizer
        self._base = Base(model, tokenizer)
        self._attention = attention_of(model)
        set_attention(model, ATTENTION)
        self.tasks = nn.ModuleDict()
        self._enabled = True
        self._takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        if config is not None:
            self.add_task(task, config)
        self.train(model.training)

    # -- tasks ---------------------------------------------------------------------------------
    def add_task(self, name: str, config: TaskConfig, initialize: bool = True) -> Task:
        """Add a prompt for another task on the same frozen model.

        ``initialize=False`` skips the initializers (text embeddings, word activations): for tasks
        whose values come from a checkpoint.
        """
        if name in self.tasks:
            raise ValueError(f"task {name!r} exists already; tasks: {list(self.tasks)}")
        if not isinstance(config, TaskConfig):
            raise TypeError(f"expected a softprompt config, got {type(config).__name__}")
        self._base.loading = not initialize
        try:
            task = METHODS[config.method](config, self._base)
        finally:
            self._base.loading = False
        parameter = next(self.base_model.parameters())
        self.tasks[name] = task.to(parameter.device).train(self.training)
        return task

    def save(self, directory) -> None:
        """Write the full trainable state of every task (training resumes from it)."""
        from .checkpoint import save

        save(self, directory)

    def export(self, directory, format: Format = "softprompt", run: RunInfo | None = None) -> None:
        """Write inference-only prompts, reparameterizations folded into plain tables (and a model card).

        ``format="peft"`` writes a PEFT prompt adapter; ``run`` adds the run's data and metrics to the card.
        """
        from .checkpoint import export

        export(self, directory, format=format, run=run)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.tasks.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside, the model is exactly the base model."""
        previous = self._enabled
        self._enabled = False
        set_attention(self.base_model, self._attention)
        try:
            yield
        finally:
            self._enabled = previous
            if previous:
                set_attention(self.base_model, ATTENTION)

    def gradient_checkpointing_enable(self) -> None:
        # Non-reentrant: the recomputed layers must see the prefix kept in their slots.
        kwargs = {"use_reentrant": False}
        if hasattr(self.base_model, "activation_checkpointing_enable"):  # transformers >= 5.23
            self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _row_tasks(self, task: str | list[str] | None, batch: int) -> list[str]:
        names = [task or DEFAULT_TASK] * batch if task is None or isinstance(task, str) else list(task)
        if len(names) != batch:
            raise ValueError(f"task has {len(names)} names for a batch of {batch} rows; give one per row")
        unknown = sorted(set(names) - set(self.tasks))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has tasks {list(self.tasks)}")
        return names

    # -- inputs --------------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | list[dict[str, str]], task: str = DEFAULT_TASK, max_length: int = 256):
        """Tokenize (and for P-Tuning render the template of) a batch, padded on the family's side."""
        if self.tokenizer is None:
            raise ValueError("tokenize needs a tokenizer: pass tokenizer=... to softprompt.attach")
        config = self.tasks[self._row_tasks(task, 1)[0]].config
        fields = [t if isinstance(t, dict) else {"text": t} for t in texts]
        if hasattr(config, "template"):
            rows = [render(config.template, f, self._base, max_length) for f in fields]
        else:
            rows = [self.tokenizer(" ".join(f.values()), truncation=True, max_length=max_length)["input_ids"] for f in fields]
        return pad_rows(rows, self._pad_id(), left=self._base.layout == "decoder")

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else (getattr(self.base_model.config, "pad_token_id", None) or 0)

    def _set_prefixes(self, names: list[str], outputs: dict[str, dict[str, torch.Tensor]]) -> None:
        """Hand each attention module its rows' prefixes: (B, KVH, P_max, D) and a (B, P_max) mask."""
        for stack, shape in self._base.stacks.items():
            for layer, module in enumerate(shape.modules):
                per_task = {}
                for name in set(names):
                    prompt = self.tasks[name].deep_prompt
                    if name in outputs and stack in outputs[name]:
                        local = layer - prompt.first_layer
                        if 0 <= local < outputs[name][stack].shape[0]:
                            per_task[name] = outputs[name][stack][local]  # (2, KVH, P, D)
                slot = slot_of(module)
                if not per_task:
                    slot.clear()
                elif len(per_task) == 1 and len(set(names)) == 1:
                    kv = next(iter(per_task.values()))
                    slot.key = kv[0].unsqueeze(0).expand(len(names), -1, -1, -1)
                    slot.value = kv[1].unsqueeze(0).expand(len(names), -1, -1, -1)
                    slot.mask = None
                else:
                    longest = max(kv.shape[2] for kv in per_task.values())
                    some = next(iter(per_task.values()))
                    rows, masks = [], []
                    for name in names:
                        kv = per_task.get(name, some.new_zeros(*some.shape[:2], 0, some.shape[3]))
                        rows.append(F.pad(kv, (0, 0, 0, longest - kv.shape[2])))
                        masks.append(torch.arange(longest, device=kv.device) < kv.shape[2])
                    stacked = torch.stack(rows)  # (B, 2, KVH, P_max, D)
                    slot.key, slot.value, slot.mask = stacked[:, 0], stacked[:, 1], torch.stack(masks)

    def _prepare(self, names, input_ids, attention_mask, kwargs) -> tuple[dict, Assembled | None]:
        """Set the prefixes and build the base model's inputs."""
        used = {name: self.tasks[name] for name in set(names)}
        deep = {n: t.deep_prompt() for n, t in used.items() if t.deep_prompt is not None}
        self._set_prefixes(names, deep)
        inputs = dict(kwargs)
        soft_tasks = {n: t.input_prompt() for n, t in used.items() if t.input_prompt is not None}
        if input_ids is None:
            if soft_tasks:
                raise ValueError("soft input tokens need input_ids (inputs_embeds alone cannot be placed)")
            inputs["attention_mask"] = attention_mask
            return inputs, None
        if not soft_tasks:
            if bool((input_ids < 0).any()):
                raise ValueError("input_ids hold template slots (negative ids) but the task has no P-Tuning template")
            inputs.update(input_ids=input_ids, attention_mask=attention_mask)
            self._add_positions(inputs, attention_mask, names, None)
            return inputs, None
        placements = [used[n].input_prompt.placement if n in soft_tasks else None for n in names]
        for row, (name, placement) in enumerate(zip(names, placements)):
            if (placement == "slots") != bool((input_ids[row] < 0).any()):
                raise ValueError(
                    f"row {row} (task {name!r}): P-Tuning rows need template slots, other rows must have none; "
                    "render P-Tuning inputs with PromptModel.tokenize"
                )
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        embeds = self.base_model.get_input_embeddings()(input_ids.clamp(min=0))
        assembled = assemble(embeds, mask, input_ids, [soft_tasks.get(n) for n in names], placements)
        inputs.update(inputs_embeds=assembled.embeds, attention_mask=assembled.mask)
        if (types := inputs.get("token_type_ids")) is not None:
            inputs["token_type_ids"] = assembled.spread(types, 0)
        self._add_positions(inputs, assembled.mask, names, assembled)
        return inputs, assembled

    def _add_positions(self, inputs: dict, mask: torch.Tensor | None, names: list[str], assembled: Assembled | None) -> None:
        """Count positions from the mask, so padding shifts nothing.

        A key/value prefix stands where a cached past of P tokens would (as in both papers'
        implementations and in PEFT), so the row's real tokens are numbered from P.
        """
        given = inputs.get("position_ids")
        if given is not None:
            if assembled is not None:
                inputs["position_ids"] = assembled.spread(given, 0)
            return
        offset = self._base.family.position_offset
        if offset is None or not self._takes_positions or self._base.layout == "encoder-decoder":
            return
        shift = [self.tasks[n].deep_prompt.num_tokens if self.tasks[n].deep_prompt is not None else 0 for n in names]
        if mask is None:
            if not any(shift):
                return
            mask = torch.ones_like(inputs["input_ids"])
        shift = torch.tensor(shift, device=mask.device)[:, None]
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0) + offset + shift

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, task=None, **kwargs):
        if not self._enabled:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        names = self._row_tasks(task, batch)
        inputs, assembled = self._prepare(names, input_ids, attention_mask, kwargs)
        tasks = [self.tasks[n] for n in names]
        heads = {t.config.head for t in tasks}
        if heads != {None}:
            if len(heads) > 1:
                raise ValueError("rows of one batch must all use a head of the same kind, or none")
            return self._head_forward(names, inputs, assembled, labels, input_ids, attention_mask)
        verbalized = labels is not None and labels.dim() == 1 and any(t.label_word_ids is not None for t in tasks)
        if labels is not None and not verbalized:
            extend = assembled is not None and labels.shape == input_ids.shape and self._base.layout != "encoder-decoder"
            inputs["labels"] = assembled.spread(labels, -100) if extend else labels
        outputs = self.base_model(**inputs)
        if assembled is not None and self._base.layout != "encoder-decoder":
            for key in ("logits", "last_hidden_state"):
                if outputs.get(key) is not None and outputs[key].shape[1] == assembled.mask.shape[1]:
                    outputs[key] = assembled.gather(outputs[key])
        if any(t.label_word_ids is not None for t in tasks) and outputs.get("logits") is not None:
            outputs["label_logits"] = self._label_logits(names, outputs["logits"], input_ids, attention_mask)
            if verbalized:
                outputs["loss"] = F.cross_entropy(outputs["label_logits"], labels)
        return outputs

    def _score_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Where label words are scored: the [MASK] of a masked LM, else the last real token."""
        if self._base.layout == "encoder":
            mask_id = self._base.mask_token_id()
            hits = input_ids == mask_id
            if not bool(hits.any(-1).all()):
                raise ValueError("every row needs a [MASK] token where the label word is scored")
            return hits.long().argmax(-1)
        return last_real(attention_mask if attention_mask is not None else torch.ones_like(input_ids))

    def _label_logits(self, names, logits, input_ids, attention_mask) -> torch.Tensor:
        where = self._score_positions(input_ids, attention_mask)
        rows = torch.arange(len(names), device=logits.device)
        scored = logits[rows, where]  # (B, V)
        words = [self.tasks[n].label_word_ids for n in names]
        width = max(len(w) for w in words if w is not None)
        out = scored.new_full((len(names), width), float("-inf"))
        for row, ids in enumerate(words):
            if ids is not None:
                out[row, : len(ids)] = scored[row, ids]
        return out

    def _head_forward(self, names, inputs, assembled, labels, input_ids, attention_mask):
        backbone = self.base_model.base_model
        hidden = backbone(**inputs).last_hidden_state  # (B, T', H)
        if assembled is not None:
            hidden = assembled.gather(hidden)  # (B, T, H)
        kind = self.tasks[names[0]].config.head
        if kind == "sequence-classification":
            mask = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
            if self._base.layout == "encoder":
                where = mask.long().argmax(-1)  # the first real token: [CLS]
            else:
                where = last_real(mask)
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), where]  # (B, H)
        width = max(self.tasks[n].config.num_labels for n in names)
        logits = hidden.new_full((*hidden.shape[:-1], width), float("-inf"), dtype=torch.float32)
        for name in set(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=hidden.device)
            head = self.tasks[name].head
            logits[rows, ..., : head.classifier.out_features] = head(hidden[rows].float())
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, width), labels.reshape(-1), ignore_index=-100)
        cls = SequenceClassifierOutput if kind == "sequence-classification" else TokenClassifierOutput
        return cls(loss=loss, logits=logits)

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, task=None, **kwargs):
        """The base model's generate, with the prompts of each row's task."""
        if not self._enabled:
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        names = self._row_tasks(task, input_ids.shape[0])
        inputs, assembled = self._prepare(names, input_ids, attention_mask, kwargs)
        # generate continues the positions given here by one per new token.
        output = self.base_model.generate(**inputs)
        if assembled is None or self._base.layout == "encoder-decoder":
            return output
        # Decoder-only generate from embeddings returns only new tokens; callers expect the prompt ids first.
        prompt = input_ids.masked_fill(input_ids < 0, self._pad_id())
        sequences = output.sequences if hasattr(output, "sequences") else output
        repeat = sequences.shape[0] // prompt.shape[0]
        full = torch.cat([prompt.repeat_interleave(repeat, 0), sequences], dim=1)
        if hasattr(output, "sequences"):
            output.sequences = full
            return output
        return full


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): the last real token; with right padding the one before the first pad, with left padding the last column."""
    return mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)


def pad_rows(rows: list[list[int]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def attach(model: nn.Module, config: TaskConfig, tokenizer=None, task: str = DEFAULT_TASK) -> PromptModel:
    """Freeze `model` and add the prompt `config` as task `task`."""
    return PromptModel(model, config, tokenizer=tokenizer, task=task)
