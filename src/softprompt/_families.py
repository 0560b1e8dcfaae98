"""The model-family table: every fact softprompt needs about a family, keyed by ``config.model_type``.

Prefixes enter through transformers' attention interface, so a family needs no code of its own:
only where its attention modules sit (one pattern per attention stack), how its layers are laid
out, and how it numbers positions. Sizes (layers, heads, head width) are read from the model
itself, never from model names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Layout = Literal["decoder", "encoder", "encoder-decoder"]
Stack = Literal["encoder", "decoder", "cross"]


@dataclass(frozen=True)
class Family:
    layout: Layout
    stacks: dict[str, str] = field(default_factory=dict)
    """Attention stack -> regex over module names; group 1 is the layer index."""
    position_offset: int | None = 0
    """Added to 0-based positions computed from the mask; None when the model takes no position ids."""
    prefix_unsupported: str | None = None
    """Why key/value prefixes cannot enter this family, where they cannot."""


_DECODER = {"decoder": r"(?:^|\.)layers\.(\d+)\.self_attn$"}

FAMILIES: dict[str, Family] = {
    "gpt2": Family("decoder", {"decoder": r"(?:^|\.)h\.(\d+)\.attn$"}),
    "llama": Family("decoder", _DECODER),
    "qwen2": Family("decoder", _DECODER),
    "qwen3": Family("decoder", _DECODER),
    "mistral": Family("decoder", _DECODER),
    "gemma3_text": Family("decoder", _DECODER),
    "bert": Family("encoder", {"encoder": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self$"}),
    # RoBERTa numbers positions from padding_idx + 1.
    "roberta": Family("encoder", {"encoder": r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self$"}, position_offset=2),
    "deberta-v2": Family(
        "encoder",
        position_offset=None,
        prefix_unsupported="DeBERTa-v2's disentangled attention does not go through transformers' attention "
        "interface, so key/value prefixes cannot enter it; use prompt-tuning or p-tuning",
    ),
    "t5": Family(
        "encoder-decoder",
        {
            "encoder": r"(?:^|\.)encoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
            "decoder": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.0\.SelfAttention$",
            "cross": r"(?:^|\.)decoder\.block\.(\d+)\.layer\.1\.EncDecAttention$",
        },
        position_offset=None,
    ),
    "bart": Family(
        "encoder-decoder",
        {
            "encoder": r"(?:^|\.)encoder\.layers\.(\d+)\.self_attn$",
            "decoder": r"(?:^|\.)decoder\.layers\.(\d+)\.self_attn$",
            "cross": r"(?:^|\.)decoder\.layers\.(\d+)\.encoder_attn$",
        },
        position_offset=None,
    ),
}


def family_of(model: nn.Module) -> Family:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported model types: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


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
