"""How key/value prefixes enter a model: one attention function shared by every family.

transformers 5.x routes the attention of nearly every model through one function picked by name
from ``ALL_ATTENTION_FUNCTIONS``; the mask is built by the function registered under the same name
in ``ALL_MASK_ATTENTION_FUNCTIONS``. softprompt registers ``"softprompt"`` in both. Its attention
function reads the prefix of the module it is called for from a :class:`PrefixSlot` kept on that
module (never in a global), prepends the prefix keys and values, widens the mask with one column
per prefix position (visible to every query; padded prefix positions of shorter prompts in a
mixed-task batch are hidden), pads T5's relative position bias with zeros, and hands over to SDPA:

    Attention(Q, [P_k; K], [P_v; V])

The KV cache holds only real tokens, so prefixes survive every cache class and every decoding step,
and positions are those of the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "softprompt"


@dataclass
class PrefixSlot:
    """The prefix one attention module sees in the current forward."""

    key: torch.Tensor | None = None  # (B, KVH, P, D)
    value: torch.Tensor | None = None  # (B, KVH, P, D)
    mask: torch.Tensor | None = None  # (B, P) bool; None when every row uses all P positions
    captured: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def clear(self) -> None:
        self.key = self.value = self.mask = None


def slot_of(module: nn.Module) -> PrefixSlot:
    slot = module.__dict__.get("_softprompt_slot")
    if slot is None:
        slot = PrefixSlot()
        module.__dict__["_softprompt_slot"] = slot
    return slot


def _repeat_rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Beam search and num_return_sequences repeat each row; the prefix follows."""
    if tensor.shape[0] == batch:
        return tensor
    if batch % tensor.shape[0]:
        raise RuntimeError(f"prefix batch {tensor.shape[0]} does not divide the attention batch {batch}")
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def _widen_mask(
    attention_mask: torch.Tensor | None,
    prefix_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    prefix_len: int,
    causal: bool,
    device: torch.device,
) -> torch.Tensor | None:
    """(B, 1|H, q, kv) -> (B, 1|H, q, P + kv): prefix columns first."""
    if attention_mask is None:
        if not causal and prefix_mask is None:
            return None  # everything visible, prefix included
        if causal:
            # Bottom-right aligned: the last query sees every key (a decoding step after a cache).
            q_pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
            attention_mask = torch.arange(kv_len, device=device)[None, :] <= q_pos
        else:
            attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        attention_mask = attention_mask[None, None]
    attention_mask = attention_mask.expand(batch, -1, q_len, -1)
    heads = attention_mask.shape[1]
    if prefix_mask is None:
        visible = torch.ones(batch, heads, q_len, prefix_len, dtype=torch.bool, device=device)
    else:
        visible = prefix_mask[:, None, None, :].expand(batch, heads, q_len, prefix_len)
    if attention_mask.dtype != torch.bool:
        # An additive float mask: 0 where visible, the dtype's minimum where hidden.
        hidden = torch.finfo(attention_mask.dtype).min
        visible = torch.zeros((), dtype=attention_mask.dtype, device=device).masked_fill(~visible, hidden)
        visible = visible.expand(batch, heads, q_len, prefix_len)
    return torch.cat([visible, attention_mask], dim=-1)


def softprompt_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    slot = module.__dict__.get("_softprompt_slot")
    if slot is not None and slot.captured is not None:
        slot.captured.append((key.detach(), value.detach()))
    if slot is None or slot.key is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    prefix_key = _repeat_rows(slot.key, batch).to(key.dtype)
    prefix_value = _repeat_rows(slot.value, batch).to(value.dtype)
    if prefix_key.shape[1] != key.shape[1] or prefix_key.shape[-1] != key.shape[-1]:
        raise RuntimeError(
            f"prefix of shape {tuple(prefix_key.shape)} does not fit keys of shape {tuple(key.shape)} "
            f"in {type(module).__name__}"
        )
    prefix_len = prefix_key.shape[2]
    prefix_mask = None if slot.mask is None else _repeat_rows(slot.mask, batch)
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False))) and q_len > 1
    attention_mask = _widen_mask(
        attention_mask, prefix_mask, batch, q_len, kv_len, prefix_len, causal, query.device
    )
    if attention_mask is not None:
        kwargs["is_causal"] = False
    if (bias := kwargs.get("position_bias")) is not None:
        # Prefix keys have no relative position: zero bias, i.e. plain content attention.
        zeros = bias.new_zeros(*bias.shape[:-1], prefix_len)
        kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
    key = torch.cat([prefix_key, key], dim=2)
    value = torch.cat([prefix_value, value], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def softprompt_mask(*args, **kwargs) -> torch.Tensor | None:
    # A causal mask must exist as a tensor to be widened: SDPA's is_causal shortcut aligns top-left
    # and would hide the prefix from the first queries.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTENTION, softprompt_attention)
AttentionMaskInterface.register(ATTENTION, softprompt_mask)


def set_attention(model: nn.Module, name: str) -> None:
    """Point every config of the model (composite ones included) at attention implementation `name`."""
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        config._attn_implementation = name
        for sub in getattr(config, "sub_configs", {}) or {}:
            sub_config = getattr(config, sub, None)
            if sub_config is not None and hasattr(sub_config, "_attn_implementation"):
                sub_config._attn_implementation = name


def attention_of(model: nn.Module) -> str:
    """The implementation the model had before softprompt (kept on the model across attaches)."""
    current = model.config._attn_implementation or "sdpa"
    if current == ATTENTION:
        return model.__dict__.get("_softprompt_original_attention", "sdpa")
    model.__dict__["_softprompt_original_attention"] = current
    return current
