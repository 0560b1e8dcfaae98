"""The model-family table: every fact softprompt needs about a family, keyed by ``config.model_type``.

Prefixes enter through transformers' attention interface, so a family needs no code of its own:
only where its attention modules sit (one pattern per attention stack), how its layers are laid
out, and how it numbers positions. Sizes (layers, heads, head width) are read from the model
itself, never from model names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn
from .errors import UserError

Layout = Literal["decoder", "encoder", "encoder-decoder"]
Stack = Literal["encoder", "decoder", "cross"]


@dataclass(frozen=True)
class Family:
    layout: Layout
    stacks: dict[str, str] = field(default_factory=dict)
    """Attention stack -> regex over module names; group 1 is the layer index."""
    pad_side: Literal["left", "right"] = "right"
    """Where batches are padded: left for decoder-only models, so every row's last token is its newest."""
    pool: Literal["first", "last"] = "first"
    """The token a sequence-classification head reads: [CLS] (first real) or the last real token."""
    score_at: Literal["mask", "last"] = "mask"
    """Where label words are scored: at [MASK] (masked LMs) or as the token after the last real one."""
    position_offset: int | None = 0
    """Added to 0-based positions computed from the mask; None when the model takes no position ids."""
    offset_after_pad: bool = False
    """Positions are numbered from ``pad_token_id + 1`` (RoBERTa): :func:`family_of` sets position_offset from the
    model's config (the table holds the usual value)."""
    position_limit: str | None = None
    """Config attribute bounding learned absolute positions (None: relative or rotary positions)."""
    reuses_prompt_kv: bool = False
    """Causal decoder: soft tokens at the start see only each other, so their keys/values can be reused."""
    outputs_follow_input: bool = True
    """Sequence outputs are over the input tokens (not over a separate decoder input)."""
    prefix_unsupported: str | None = None
    """Why key/value prefixes cannot enter this family, where they cannot."""


def decoder(stacks: dict[str, str], position_limit: str | None = None) -> Family:
    return Family("decoder", stacks, pad_side="left", pool="last", score_at="last", position_limit=position_limit,
                  reuses_prompt_kv=True)


def encoder(stacks: dict[str, str], position_offset: int | None = 0, prefix_unsupported: str | None = None,
            offset_after_pad: bool = False) -> Family:
    return Family("encoder", stacks, position_offset=position_offset, offset_after_pad=offset_after_pad,
                  position_limit="max_position_embeddings" if position_offset is not None else None,
                  prefix_unsupported=prefix_unsupported)


def encoder_decoder(stacks: dict[str, str], position_limit: str | None = None) -> Family:
    return Family("encoder-decoder", stacks, position_offset=None, position_limit=position_limit,
                  outputs_follow_input=False)


_DECODER = {"decoder": r"(?:^|\.)layers\.(\d+)\.self_attn$"}
_BERT = {"encoder": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self$"}

FAMILIES: dict[str, Family] = {
    "gpt2": decoder({"decoder": r"(?:^|\.)h\.(\d+)\.attn$"}, position_limit="n_positions"),
    "llama": decoder(_DECODER),
    "qwen2": decoder(_DECODER),
    "qwen3": decoder(_DECODER),
    "mistral": decoder(_DECODER),
    "gemma3_text": decoder(_DECODER),
    "bert": encoder(_BERT),
    # RoBERTa numbers positions from padding_idx + 1 (2 with its own vocabulary's pad id 1).
    "roberta": encoder(_BERT, position_offset=2, offset_after_pad=True),
    "deberta-v2": encoder(
        {},
        position_offset=None,
        prefix_unsupported="DeBERTa-v2's disentangled attention does not go through transformers' attention "
        "interface, so key/value prefixes cannot enter it; use prompt-tuning or p-tuning",
    ),
    "t5": encoder_decoder(
        {
            "encoder": r"(?:^|\.)encoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
            "decoder": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
            "cross": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.1\.EncDecAttention$",
        },
    ),
    "bart": encoder_decoder(
        {
            "encoder": r"(?:^|\.)encoder\.layers\.(\d+)\.self_attn$",
            "decoder": r"(?:^|\.)decoder\.layers\.(\d+)\.self_attn$",
            "cross": r"(?:^|\.)decoder\.layers\.(\d+)\.encoder_attn$",
        },
        position_limit="max_position_embeddings",
    ),
}


def family_of(model: nn.Module) -> Family:
    """The family table's entry for `model`, with the facts its config decides (RoBERTa's first position)."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise UserError(
            f"model_type {model_type!r} is not supported; supported model types: {', '.join(sorted(FAMILIES))}"
        )
    family = FAMILIES[model_type]
    pad = getattr(model.config.get_text_config(), "pad_token_id", None)
    if family.offset_after_pad and pad is not None and pad + 1 != family.position_offset:
        family = replace(family, position_offset=pad + 1)
    return family


@dataclass(frozen=True)
class StackShape:
    """Where one attention stack's modules are and the shape of their keys: (layers, kv heads, head width)."""

    modules: list[nn.Module]
    kv_heads: int
    head_dim: int

    @property
    def num_layers(self) -> int:
        return len(self.modules)


def _kv_shape(config, stack: str) -> tuple[int, int]:
    config = config.get_text_config()
    heads = config.num_attention_heads
    if stack != "encoder" and getattr(config, "decoder_attention_heads", None):
        heads = config.decoder_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return kv_heads, head_dim


def attention_stacks(model: nn.Module) -> dict[str, StackShape]:
    """The attention modules of each stack, in layer order, found by the family's patterns."""
    family = family_of(model)
    stacks: dict[str, StackShape] = {}
    for stack, pattern in family.stacks.items():
        found: dict[int, nn.Module] = {}
        for name, module in model.named_modules():
            if match := re.search(pattern, name):
                found[int(match.group(1))] = module
        if not found:
            continue  # e.g. the encoder half alone, or a decoder-only stack of an encoder-decoder family
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"{model.config.model_type}: layers of the {stack} stack are not numbered 0..n-1")
        kv_heads, head_dim = _kv_shape(model.config, stack)
        stacks[stack] = StackShape([found[i] for i in range(len(found))], kv_heads, head_dim)
    return stacks
