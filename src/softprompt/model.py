"""PromptModel: prompts for many tasks on one frozen HuggingFace model.

``attach(model, config)`` freezes the model, puts softprompt's attention function in front of the
model's own (a call without prompts is exactly the base model's call) and adds the first task. A
forward takes the model's own inputs plus ``task`` (one name, or one per row) and returns the
model's own outputs. Each row's task says where its prompt enters (``Task.enter``): a key/value
prefix for attention modules, an edit of the row's input (soft tokens inserted or swapped into
template slots), or both. The call's prefixes travel with the call as a forward keyword (or, for
``generate``, in a scope cleared on exit), so nothing of a call outlives it: the base model called
directly, another thread, another PromptModel on the same base, or a gradient-checkpoint recompute
never sees another call's prompts. Positions are counted from the attention mask (left padding
shifts nothing) and continue after a prefix as after a cached past. At inference, soft tokens that
open the input of a causal decoder enter as a reused key/value prefix, computed once per prompt.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from ._attention import _ALWAYS_VISIBLE, KWARG, Prefix, Prompts, install, scope, uninstall
from ._inputs import assemble
from ._parts import Entered
from ._task import Base, Task
from .card import Format, RunInfo
from .config import TaskConfig
from .methods import METHODS

DEFAULT_TASK = "default"

# PromptModels whose prompts are off in the current thread / context (see PromptModel.disabled).
_DISABLED: ContextVar[frozenset[int]] = ContextVar("softprompt_disabled", default=frozenset())


class PromptModel(nn.Module):
    accepts_loss_kwargs = False
    """transformers.Trainer: the losses are means over the batch; Trainer divides by accumulation steps itself."""

    def __init__(self, model: nn.Module, config: TaskConfig | None, tokenizer=None, task: str = DEFAULT_TASK) -> None:
        super().__init__()
        self.base_model = model
        self.tokenizer = tokenizer
        self._base = Base(model, tokenizer)
        self.family = self._base.family
        self.original_attention = install(model, self, attention=bool(self._base.stacks))
        self.tasks = nn.ModuleDict()
        self.reuse_prompt_kv = True
        """At inference, let soft tokens that open a causal decoder's input enter as a reused key/value prefix."""
        parameters = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in parameters
        self._keeps_logits = "logits_to_keep" in parameters and self.family.score_at == "last"
        self._attached = True
        # A PromptModel's own state is its tasks: the frozen base model is not saved or loaded with it.
        self._register_state_dict_hook(_drop_base_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_base_keys)
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
        """Inside, this PromptModel is exactly its base model (in this thread; other PromptModels are unaffected)."""
        token = _DISABLED.set(_DISABLED.get() | {id(self)})
        try:
            yield
        finally:
            _DISABLED.reset(token)

    def detach(self) -> nn.Module:
        """Hand back the base model with its own attention implementation and trainable flags.

        Other PromptModels attached to the same model keep working; the base gets its attention back
        when the last of them detaches. This PromptModel cannot be called afterwards.
        """
        if self._attached:
            uninstall(self.base_model, self)
            self._attached = False
        return self.base_model

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options) -> None:
        """Recompute the base model's layers in the backward pass (the same signature as transformers' models).

        Always non-reentrant: the recomputed layers get the same call keywords, the prefixes among them.
        """
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        if hasattr(self.base_model, "activation_checkpointing_enable"):  # transformers >= 5.23
            self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **options)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def _row_tasks(self, task: str | list[str] | None, batch: int) -> list[str]:
        if not self._attached:
            raise RuntimeError("this PromptModel was detached from its base model; attach again with softprompt.attach")
        names = [task or DEFAULT_TASK] * batch if task is None or isinstance(task, str) else list(task)
        if len(names) != batch:
            raise ValueError(f"task has {len(names)} names for a batch of {batch} rows; give one per row")
        unknown = sorted(set(names) - set(self.tasks))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has tasks {list(self.tasks)}")
        return names

    def _is_disabled(self) -> bool:
        return id(self) in _DISABLED.get()

    # -- inputs --------------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | list[dict[str, str]], task: str = DEFAULT_TASK, max_length: int = 256):
        """Tokenize (and for P-Tuning templates render) a batch, padded on the family's side."""
        if self.tokenizer is None:
            raise ValueError("tokenize needs a tokenizer: pass tokenizer=... to softprompt.attach")
        render = self.tasks[self._row_tasks(task, 1)[0]].render
        rows = [render(t if isinstance(t, dict) else {"text": t}, self._base, max_length) for t in texts]
        return pad_rows(rows, self._pad_id(), left=self.family.pad_side == "left")

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else (getattr(self.base_model.config, "pad_token_id", None) or 0)

    def _enter(self, names: list[str], input_ids: torch.Tensor | None, mask: torch.Tensor | None,
               reuse: bool, continuing: bool = False) -> dict[str, Entered]:
        """Each task's entry into this call; reused prefixes only where every row starts as they assume.

        A continuation keeps what the first step chose (its leading tokens are in the cache).
        """
        entered = {name: self.tasks[name].enter(self._base, reuse) for name in dict.fromkeys(names)}
        if continuing:
            return entered
        stale = [n for n, e in entered.items() if e.lead and not _rows_start_with(input_ids, mask, names, n, e.lead)]
        for name in stale:
            entered[name] = self.tasks[name].enter(self._base, False)
        return entered

    def _prepare(self, names: list[str], input_ids, attention_mask, kwargs: dict, reuse: bool):
        """(base model inputs, the assembly of the input sequence or None, the call's prompts or None).

        A call that continues a cache (decoding) gets its prefixes only: its input edits are in the cache.
        """
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        continuing = cache is not None and cache.get_seq_length() > 0
        entered = self._enter(names, input_ids, attention_mask, reuse, continuing)
        edits = [None if continuing else entered[n].edit for n in names]
        inputs = dict(kwargs)
        assembled = None
        if any(e is not None for e in edits):
            if input_ids is None:
                raise ValueError("soft input tokens need input_ids (inputs_embeds alone cannot be placed)")
            _check_slots(names, edits, input_ids)
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            embeds = self.base_model.get_input_embeddings()(input_ids.clamp(min=0))
            assembled = assemble(embeds, mask, input_ids, edits, left=self._pads_left(mask))
            inputs.update(inputs_embeds=assembled.embeds, attention_mask=assembled.mask)
            if (types := inputs.get("token_type_ids")) is not None:
                inputs["token_type_ids"] = assembled.spread(types, 0)
            if (given := inputs.get("position_ids")) is not None:
                inputs["position_ids"] = assembled.spread(given, 0)
            mask = assembled.mask
        else:
            if input_ids is not None and bool((input_ids < 0).any()):
                bad = sorted({n for n, row in zip(names, input_ids) if bool((row < 0).any())})
                raise ValueError(f"input_ids hold template slots (negative ids) but task(s) {bad} have no P-Tuning template")
            inputs.update(input_ids=input_ids, attention_mask=attention_mask)
            mask = attention_mask
        self._add_positions(inputs, mask, [entered[n].length for n in names])
        prompts = self._prompts(names, entered)
        return inputs, assembled, prompts

    def prepare(self, input_ids, attention_mask=None, task=None, **kwargs) -> dict:
        """The base model's inputs for one call, its prompts included, for code that drives the base model itself.

        A decoding loop with its own cache calls ``base_model(**pm.prepare(...))`` for the first
        step and again for each continuation (with the cache in ``past_key_values`` and the attention
        mask over everything the cache holds). The first step's inputs may hold ``inputs_embeds``
        and a longer ``attention_mask`` than the caller's, where soft tokens entered the input: the
        cache then holds them, and continuations extend that mask. Prompts are reused as at
        inference in eval mode without gradients.
        """
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        names = self._row_tasks(task, batch)
        reuse = self.reuse_prompt_kv and not self.training and not torch.is_grad_enabled()
        inputs, _, prompts = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        if prompts is not None:
            inputs[KWARG] = prompts
        return inputs

    def _pads_left(self, mask: torch.Tensor) -> bool:
        if bool((mask[:, 0] == 0).any()):
            return True
        if bool((mask[:, -1] == 0).any()):
            return False
        return self.family.pad_side == "left"

    def _prompts(self, names: list[str], entered: dict[str, Entered]) -> Prompts | None:
        """Each attention module's prefix for the rows of this call: (B|1, KVH, P_max, D) and a (B, P_max) mask."""
        modules = list(dict.fromkeys(m for e in entered.values() for m in e.prefix))
        if not modules:
            return None
        used = list(entered)
        prefixes = {}
        if len(used) == 1:
            only = entered[used[0]]
            for module in modules:
                kv = only.prefix[module]  # (2, KVH, P, D)
                positions = torch.arange(kv.shape[2], device=kv.device)[None] if only.windowed else None
                prefixes[module] = Prefix(kv[0][None], kv[1][None], None, positions)
            return Prompts(prefixes)
        rows = torch.tensor([used.index(n) for n in names])
        windowed = any(entered[n].windowed for n in used)
        for module in modules:
            some = next(e.prefix[module] for e in entered.values() if module in e.prefix)
            lengths = [entered[n].prefix[module].shape[2] if module in entered[n].prefix else 0 for n in used]
            longest = max(lengths)
            table = torch.stack([
                F.pad(entered[n].prefix[module], (0, 0, 0, longest - size)) if size else some.new_zeros(*some.shape[:2], longest, some.shape[3])
                for n, size in zip(used, lengths)
            ])  # (tasks, 2, KVH, P_max, D)
            index = rows.to(some.device)
            kv = table[index]  # (B, 2, KVH, P_max, D)
            columns = torch.arange(longest, device=some.device)
            mask = columns[None] < torch.tensor(lengths, device=some.device)[index][:, None]  # (B, P_max)
            positions = None
            if windowed:
                flags = torch.tensor([entered[n].windowed for n in used], device=some.device)[index]
                positions = torch.where(flags[:, None], columns[None], _ALWAYS_VISIBLE)
            prefixes[module] = Prefix(kv[:, 0], kv[:, 1], None if bool(mask.all()) else mask, positions)
        return Prompts(prefixes)

    def _add_positions(self, inputs: dict, mask: torch.Tensor | None, shifts: list[int]) -> None:
        """Count positions from the mask, so padding shifts nothing.

        A key/value prefix stands where a cached past of P tokens would (as in both papers'
        implementations and in PEFT), so the row's real tokens are numbered from P.
        """
        offset = self.family.position_offset
        if inputs.get("position_ids") is None and offset is not None and self._takes_positions:
            if mask is None and any(shifts):
                mask = torch.ones_like(inputs["input_ids"])
            if mask is not None:
                shift = torch.tensor(shifts, device=mask.device)[:, None]
                positions = (mask.long().cumsum(-1) - 1).clamp(min=0) + offset + shift
                tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
                inputs["position_ids"] = positions[:, -tokens.shape[1] :]  # a continuation's mask covers the cache
        self._check_positions(inputs)

    def _check_positions(self, inputs: dict) -> None:
        """An input (with its prompt) longer than the model's learned positions is an error naming the limit."""
        attribute = self.family.position_limit
        limit = getattr(self.base_model.config, attribute, None) if attribute else None
        if limit is None:
            return
        positions = inputs.get("position_ids")
        if positions is not None:
            last = int(positions.max()) - (self.family.position_offset or 0)
        else:
            tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
            last = tokens.shape[1] - 1
        room = limit - (self.family.position_offset or 0)
        if last >= room:
            raise ValueError(
                f"the input and its prompt need {last + 1} positions but {self.base_model.config.model_type} has "
                f"{room}; shorten the inputs (softprompt train/eval: --max-length) or use fewer virtual tokens"
            )

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, task=None, **kwargs):
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        names = self._row_tasks(task, batch)
        if self._is_disabled():
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        reuse = self.reuse_prompt_kv and labels is None and not self.training and not torch.is_grad_enabled()
        inputs, assembled, prompts = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        if prompts is not None:
            inputs[KWARG] = prompts
        tasks = [self.tasks[n] for n in names]
        heads = {t.config.head for t in tasks}
        if heads != {None}:
            if len(heads) > 1:
                raise ValueError("rows of one batch must all use a head of the same kind, or none")
            return self._head_forward(names, inputs, assembled, labels, input_ids, attention_mask)
        follows = self.family.outputs_follow_input
        verbalized = labels is not None and labels.dim() == 1 and any(t.label_word_ids is not None for t in tasks)
        window = self._window(assembled, input_ids, attention_mask) if "logits_to_keep" not in kwargs else None
        if window is not None:
            # The LM head runs on the caller's positions and the one before the first (which predicts it).
            keep, unpredicted = window
            inputs["logits_to_keep"] = keep  # (B, T + 1)
            if labels is not None and not verbalized:
                labels = torch.cat([labels.new_full((labels.shape[0], 1), -100), labels], dim=1)
                labels[unpredicted, 1] = -100
                inputs["labels"] = labels
        elif labels is not None and not verbalized:
            extend = assembled is not None and follows and labels.shape == input_ids.shape
            inputs["labels"] = assembled.spread(labels, -100) if extend else labels
        outputs = self.base_model(**inputs)
        if window is not None:
            outputs["logits"] = outputs["logits"][:, 1:]
        if assembled is not None and follows:
            for key in ("logits", "last_hidden_state"):
                if outputs.get(key) is not None and outputs[key].shape[1] == assembled.mask.shape[1]:
                    outputs[key] = assembled.gather(outputs[key])
        if any(t.label_word_ids is not None for t in tasks) and outputs.get("logits") is not None:
            outputs["label_logits"] = self._label_logits(names, outputs["logits"], input_ids, attention_mask)
            if verbalized:
                outputs["loss"] = F.cross_entropy(outputs["label_logits"], labels)
        return outputs

    def _window(self, assembled, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per row, the T + 1 consecutive positions that hold the caller's tokens and the one before them.

        Where soft tokens were inserted before each row's tokens on a causal LM, the LM head needs only
        these: (keep (B, T + 1), rows whose first token nothing precedes (B,) bool). None where the
        caller's tokens are not consecutive (soft tokens after the first or last token).
        """
        if assembled is None or not self._keeps_logits or not assembled.moved:
            return None
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        length = input_ids.shape[1]
        first = mask.long().argmax(-1)  # (B,) the first real caller position
        start = assembled.origin.gather(1, first[:, None])[:, 0] - first - 1  # (B,)
        steps = torch.arange(length + 1, device=start.device)
        real = mask.bool()
        if not bool((assembled.origin == start[:, None] + 1 + steps[None, :length])[real].all()):
            return None
        return (start[:, None] + steps[None]).clamp(min=0), start < 0

    def _score_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Where label words are scored: the [MASK] of a masked LM, else the last real token."""
        if self.family.score_at == "mask":
            hits = input_ids == self._base.mask_token_id()
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
            where = mask.long().argmax(-1) if self.family.pool == "first" else last_real(mask)
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), where]  # (B, H)
        width = max(self.tasks[n].config.num_labels for n in names)
        logits = hidden.new_full((*hidden.shape[:-1], width), float("-inf"), dtype=torch.float32)
        for name in dict.fromkeys(names):
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
        names = self._row_tasks(task, input_ids.shape[0])
        if self._is_disabled():
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        reuse = self.reuse_prompt_kv and not self.training
        inputs, assembled, prompts = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        # generate refuses unknown keywords: the prefixes go in a scope that ends with the call.
        with scope(prompts) if prompts is not None else contextlib.nullcontext():
            output = self.base_model.generate(**inputs)  # continues the positions given here by one per token
        if assembled is None or not self.family.outputs_follow_input:
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


def _drop_base_keys(module: PromptModel, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "base_model.")]:
        del state_dict[key]


def _ignore_missing_base_keys(module: PromptModel, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("base_model.")]


def _rows_start_with(input_ids, mask, names: list[str], name: str, lead: tuple[int, ...]) -> bool:
    """Whether every row of task `name` starts (after its padding) with the ids `lead`."""
    if input_ids is None:
        return False
    for row, row_name in enumerate(names):
        if row_name != name:
            continue
        ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
        if ids[: len(lead)].tolist() != list(lead):
            return False
    return True


def _check_slots(names: list[str], edits: list, input_ids: torch.Tensor) -> None:
    for row, (name, edit) in enumerate(zip(names, edits)):
        has_slots = bool((input_ids[row] < 0).any())
        wants_slots = edit is not None and edit.slots is not None
        if wants_slots and not has_slots:
            raise ValueError(
                f"row {row} (task {name!r}): a P-Tuning template needs its slots in the input; render the rows "
                "with PromptModel.tokenize, or use PTuningConfig(num_virtual_tokens=N) without a template to "
                "pass plain input_ids"
            )
        if has_slots and not wants_slots:
            raise ValueError(f"row {row} (task {name!r}) holds template slots (negative ids) but its task has no "
                             "P-Tuning template")


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


__all__ = ["DEFAULT_TASK", "PromptModel", "attach", "last_real", "pad_rows"]
