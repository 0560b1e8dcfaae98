"""How key/value prefixes enter a model: one attention function shared by every family.

transformers 5.x routes the attention of nearly every model through a function picked by name from
``AttentionInterface``, with the mask built by the function of the same name in
``AttentionMaskInterface``. While a PromptModel is attached, softprompt's name stands in for the
model's own implementation (``softprompt`` for SDPA, ``softprompt_eager`` for eager); its mask
function *is* the original one, and its attention function calls the original one. A call's
prefixes travel with that call, as the keyword :data:`KWARG` that every family hands down to its
attention function (cross-attention and gradient-checkpoint recomputes included), or for
``generate``, which refuses unknown keywords, in a :func:`scope` that is cleared in ``finally``.
A call without prefixes is therefore exactly the base model's own call. A call with a prefix for a
module computes

    Attention(Q, [P_k; K], [P_v; V])

with the mask widened by one column per prefix position: visible to every query (Prefix-Tuning's
prefix), hidden where a shorter prompt of a mixed-task batch is padded, and, for soft tokens whose
keys and values are reused as a prefix, subject to the model's sliding window as the tokens would
have been. Where the model needs no mask (causal, no padding), placeholder queries in front keep
SDPA's fused causal kernels. The KV cache holds only real tokens, so prefixes survive every cache class and every
decoding step.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

KWARG = "softprompt_prefixes"
"""The forward keyword that carries a call's prefixes down to every attention function."""

# The implementations a prefix can enter, and the name softprompt registers for each.
NAMES = {"sdpa": "softprompt", "eager": "softprompt_eager"}
ORIGINAL = {name: original for original, name in NAMES.items()}
# Far in the future: prefix columns at this position are never outside a sliding window.
_ALWAYS_VISIBLE = 2**40


@dataclass(frozen=True)
class Prefix:
    """The keys and values one attention module gets in front of its own, for one call."""

    key: torch.Tensor  # (B, KVH, P, D); B may be 1 for a prefix shared by every row
    value: torch.Tensor  # (B, KVH, P, D)
    mask: torch.Tensor | None = None  # (B, P) bool: padded positions of shorter prompts are False
    positions: torch.Tensor | None = None
    """(B, P) sequence positions of the columns where a sliding window applies to them (reused soft
    tokens); None when every query sees every column (a key/value prefix)."""


@dataclass
class Prompts:
    """What one call hands to the attention modules: a prefix per module, and optionally a capture list."""

    prefixes: dict[int, Prefix] = field(default_factory=dict)  # id(attention module) -> Prefix
    capture: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] | None = None
    """When a list, every attention call appends (module, keys, values) of its real tokens to it."""


_SCOPE: ContextVar[Prompts | None] = ContextVar("softprompt_scope", default=None)


@contextlib.contextmanager
def scope(prompts: Prompts) -> Iterator[None]:
    """Hand `prompts` to every attention call inside (for APIs that take no extra keyword, like generate).

    A context variable, so other threads and other tasks never see it, and it is gone on exit.
    """
    token = _SCOPE.set(prompts)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def repeat_rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Beam search and num_return_sequences repeat each row; the prefix follows. A batch of 1 broadcasts."""
    if tensor.shape[0] == batch or tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor
    if batch % tensor.shape[0]:
        raise RuntimeError(f"prefix batch {tensor.shape[0]} does not divide the attention batch {batch}")
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def prefix_columns(
    prefix: Prefix, batch: int, q_len: int, query_positions: torch.Tensor | None, sliding_window: int | None
) -> torch.Tensor | None:
    """(B, 1, q, P) bool: which prefix columns each query sees; None when it sees them all."""
    visible = None
    if prefix.mask is not None:
        visible = repeat_rows(prefix.mask, batch)[:, None, None, :]  # (B, 1, 1, P)
    if prefix.positions is not None and sliding_window is not None:
        if query_positions is None:
            raise RuntimeError("a sliding-window layer needs position_ids to place reused prompt tokens")
        columns = repeat_rows(prefix.positions, batch)[:, None, None, :]  # (B, 1, 1, P)
        rows = repeat_rows(query_positions.reshape(-1, q_len), batch)[:, None, :, None]  # (B, 1, q, 1)
        inside = (rows - columns) < sliding_window
        visible = inside if visible is None else visible & inside
    if visible is None:
        return None
    return visible.expand(batch, 1, q_len, visible.shape[-1])


def widen_mask(
    mask: torch.Tensor | None,
    columns: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    prefix_len: int,
    causal: bool,
    additive: torch.dtype | None,
    device: torch.device,
) -> torch.Tensor | None:
    """The model's mask over (q, kv) widened to (q, P + kv), prefix columns first.

    mask: what the model's own mask function built: None (no mask needed), a (B|1, 1|H, q, kv) bool
    mask (True = visible) or an additive float mask. columns: (B, 1, q, P) from
    :func:`prefix_columns`, None when every prefix column is visible. causal: the real keys need a
    causal pattern that the model left to ``is_causal`` (mask None, q > 1); with a prefix in front it
    aligns bottom-right.
    additive: a float dtype to return an additive mask in (eager attention adds it to the scores).
    """
    if mask is None:
        if not causal and columns is None:
            return None  # everything visible, prefix included
        if causal:
            # Bottom-right aligned: the last query sees every key.
            rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
            mask = torch.arange(kv_len, device=device)[None, :] <= rows
        else:
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        mask = mask[None, None]
    mask = mask.expand(batch, -1, q_len, -1)
    heads = mask.shape[1]
    if columns is None:
        columns = torch.ones(batch, heads, q_len, prefix_len, dtype=torch.bool, device=device)
    else:
        columns = columns.expand(batch, heads, q_len, prefix_len)
    if mask.dtype != torch.bool:
        hidden = torch.finfo(mask.dtype).min
        columns = torch.zeros((), dtype=mask.dtype, device=device).masked_fill(~columns, hidden)
        columns = columns.expand(batch, heads, q_len, prefix_len)
    widened = torch.cat([columns, mask], dim=-1)
    if additive is not None and widened.dtype == torch.bool:
        widened = torch.zeros((), dtype=additive, device=device).masked_fill(~widened, torch.finfo(additive).min)
    return widened


def _eager_of(module: nn.Module) -> Callable:
    """The family's own eager attention function (every transformers 5.x modeling file defines one)."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in {type(module).__module__}")
    return function


def _attention(kind: str) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompts = kwargs.pop(KWARG, None) or _SCOPE.get()
        inner = sdpa_attention_forward if kind == "sdpa" else _eager_of(module)
        if prompts is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        if prompts.capture is not None:
            prompts.capture.append((module, key.detach(), value.detach()))
        prefix = prompts.prefixes.get(id(module))
        if prefix is None:
            return inner(module, query, key, value, attention_mask, **kwargs)

        batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
        prefix_key = repeat_rows(prefix.key, batch).to(key.dtype)
        prefix_value = repeat_rows(prefix.value, batch).to(value.dtype)
        if prefix_key.shape[1] != key.shape[1] or prefix_key.shape[-1] != key.shape[-1]:
            raise RuntimeError(
                f"prefix of shape {tuple(prefix_key.shape)} does not fit keys of shape {tuple(key.shape)} "
                f"in {type(module).__name__}"
            )
        prefix_len = prefix_key.shape[2]
        causal = q_len > 1 and bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        bias = kwargs.get("position_bias")
        columns = prefix_columns(prefix, batch, q_len, kwargs.get("position_ids"), kwargs.get("sliding_window"))
        key = torch.cat([prefix_key, key], dim=2)
        value = torch.cat([prefix_value, value], dim=2)
        if kind == "sdpa" and causal and attention_mask is None and columns is None and bias is None:
            # Causal attention aligned bottom-right, without a mask: P placeholder queries in front make
            # SDPA's top-left is_causal the right pattern, so its fused causal kernels run (a
            # materialised (q, P + kv) mask costs about 1.6x at 1,024 tokens on a CPU).
            padded = torch.cat([query.new_zeros(*query.shape[:2], prefix_len, query.shape[3]), query], dim=2)
            kwargs["is_causal"] = True
            output, weights = inner(module, padded, key, value, None, **kwargs)
            return output[:, prefix_len:], weights
        attention_mask = widen_mask(
            attention_mask, columns, batch, q_len, kv_len, prefix_len, causal and attention_mask is None,
            additive=query.dtype if kind == "eager" else None, device=query.device,
        )
        if attention_mask is not None:
            kwargs["is_causal"] = False
        if bias is not None:
            # Prefix keys have no relative position: zero bias, i.e. plain content attention.
            kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], prefix_len), bias], dim=-1)
        return inner(module, query, key, value, attention_mask, **kwargs)

    return attention


for _original, _name in NAMES.items():
    AttentionInterface.register(_name, _attention(_original))
    AttentionMaskInterface.register(_name, sdpa_mask if _original == "sdpa" else eager_mask)


# -- attaching ---------------------------------------------------------------------------------
_REGISTRY = "_softprompt_attached"


@dataclass
class _Attached:
    """What attaching changed on a base model, to hand it back as it was."""

    original: str
    requires_grad: dict[str, bool]
    switched: bool
    models: weakref.WeakSet = field(default_factory=weakref.WeakSet)


def install(model: nn.Module, owner: nn.Module, attention: bool = True) -> str:
    """Freeze the model and point its attention at softprompt's stand-in for its own; return the original.

    attention=False (a family whose attention bypasses the interface) only freezes.
    """
    record: _Attached | None = model.__dict__.get(_REGISTRY)
    if record is None:
        current = model.config._attn_implementation or "sdpa"
        current = ORIGINAL.get(current, current)
        kept = current if current in NAMES else "sdpa"
        if attention and kept != current:
            warnings.warn(
                f"while attached, this model's attention runs through SDPA (its own calls too): {current!r} cannot "
                f"take a key/value prefix here; the base model gets {current!r} back on detach()",
                stacklevel=3,
            )
        record = _Attached(current, {name: p.requires_grad for name, p in model.named_parameters()}, attention)
        model.__dict__[_REGISTRY] = record
        if attention:
            _set(model, NAMES[kept])
    record.models.add(owner)
    model.requires_grad_(False)
    return record.original


def uninstall(model: nn.Module, owner: nn.Module) -> None:
    """Forget `owner`; when no PromptModel is left on the model, hand back its attention and trainable flags."""
    record: _Attached | None = model.__dict__.get(_REGISTRY)
    if record is None:
        return
    record.models.discard(owner)
    if len(record.models):
        return
    if record.switched:
        _set(model, record.original)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(record.requires_grad.get(name, parameter.requires_grad))
    del model.__dict__[_REGISTRY]


def _set(model: nn.Module, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
