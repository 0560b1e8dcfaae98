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

from ._attention import KWARG, install, scope, uninstall
from ._call import Call
from ._call import prepare as prepare_call
from ._outputs import head_forward, label_logits, lm_window, score_positions
from ._task import Base, Task
from .card import Format, RunInfo
from .config import TaskConfig
from .methods import METHODS
from .errors import UserError

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
            raise UserError(f"task {name!r} exists already; tasks: {list(self.tasks)}")
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
            raise UserError(f"task has {len(names)} names for a batch of {batch} rows; give one per row")
        unknown = sorted(set(names) - set(self.tasks))
        if unknown:
            raise UserError(f"unknown task(s) {unknown}; this model has tasks {list(self.tasks)}")
        return names

    def _is_disabled(self) -> bool:
        return id(self) in _DISABLED.get()

    # -- inputs --------------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | list[dict[str, str]], task: str = DEFAULT_TASK, max_length: int = 256):
        """Tokenize (and for P-Tuning templates render) a batch, padded on the family's side."""
        if self.tokenizer is None:
            raise UserError("tokenize needs a tokenizer: pass tokenizer=... to softprompt.attach")
        render = self.tasks[self._row_tasks(task, 1)[0]].render
        rows = [render(t if isinstance(t, dict) else {"text": t}, self._base, max_length) for t in texts]
        return pad_rows(rows, self._pad_id(), left=self.family.pad_side == "left")

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else (getattr(self.base_model.config, "pad_token_id", None) or 0)

    def _prepare(self, names: list[str], input_ids, attention_mask, kwargs: dict, reuse: bool) -> Call:
        return prepare_call(self._base, self.tasks, names, input_ids, attention_mask, kwargs, reuse, self._takes_positions)

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
        call = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        if call.prompts is not None:
            call.inputs[KWARG] = call.prompts
        return call.inputs

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, task=None, **kwargs):
        batch = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        names = self._row_tasks(task, batch)
        if self._is_disabled():
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        reuse = self.reuse_prompt_kv and labels is None and not self.training and not torch.is_grad_enabled()
        call = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        inputs, assembled = call.inputs, call.assembled
        if call.prompts is not None:
            inputs[KWARG] = call.prompts
        tasks = [self.tasks[n] for n in names]
        heads = {t.config.head for t in tasks}
        if heads != {None}:
            if len(heads) > 1:
                raise UserError("rows of one batch must all use a head of the same kind, or none")
            return head_forward(self._base, self.tasks, names, inputs, assembled, labels, attention_mask)
        follows = self.family.outputs_follow_input
        verbalized = labels is not None and labels.dim() == 1 and any(t.label_word_ids is not None for t in tasks)
        window = None
        if self._keeps_logits and "logits_to_keep" not in kwargs:
            window = lm_window(assembled, input_ids, attention_mask)
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
            where = score_positions(self._base, input_ids, attention_mask)
            outputs["label_logits"] = label_logits([t.label_word_ids for t in tasks], outputs["logits"], where)
            if verbalized:
                outputs["loss"] = F.cross_entropy(outputs["label_logits"], labels)
        return outputs

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, task=None, **kwargs):
        """The base model's generate, with the prompts of each row's task."""
        names = self._row_tasks(task, input_ids.shape[0])
        if self._is_disabled():
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        reuse = self.reuse_prompt_kv and not self.training
        call = self._prepare(names, input_ids, attention_mask, kwargs, reuse)
        # generate refuses unknown keywords: the prefixes go in a scope that ends with the call.
        with scope(call.prompts) if call.prompts is not None else contextlib.nullcontext():
            output = self.base_model.generate(**call.inputs)  # continues the positions given here by one per token
        if call.assembled is None or not self.family.outputs_follow_input:
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


__all__ = ["DEFAULT_TASK", "PromptModel", "attach", "pad_rows"]
