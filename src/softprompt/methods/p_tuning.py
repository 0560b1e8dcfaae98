"""P-Tuning (Liu et al. 2021, "GPT Understands, Too"): soft tokens from a prompt encoder, in a template.

A template such as ``[P:3] {text} [P:3] It was [MASK].`` interleaves soft slots h_i, input fields
and fixed anchor words. The soft tokens come from a prompt encoder,
h = MLP(BiLSTM(e_1 .. e_P)) (or MLP(e), or a plain table), which is run once and dropped at
inference. Rendering a template writes slot i as the token id ``-(i + 1)``; the model swaps those
positions for h_i. Label words are scored by the LM head at [MASK] (masked LMs) or as the token that
follows the template (causal LMs, where the template stops at [MASK]). Without a template the soft
tokens go before the model's own input ids, as in PEFT's P-Tuning.
"""

from __future__ import annotations

import re
from functools import partial

import torch

from .._parts import InputPrompt, make_encoder
from .._task import Base, Task
from ..config import PTuningConfig
from ..errors import UserError

_PIECE = re.compile(r"(\[P(?::\d+)?\]|\{\w+\}|\[MASK\])")


def render(template: str, fields: dict[str, str], base: Base, max_length: int | None = None) -> list[int]:
    """Token ids of a filled template; soft slot i is -(i + 1)."""
    ids: list[int] = []
    field_spans: list[tuple[int, int]] = []
    slot = 0
    for piece in _PIECE.split(template):
        if not piece:
            continue
        if match := re.fullmatch(r"\[P(?::(\d+))?\]", piece):
            count = int(match.group(1) or 1)
            ids += [-(slot + i + 1) for i in range(count)]
            slot += count
        elif piece == "[MASK]":
            if base.layout != "encoder":
                break  # causal LM: the label word is the next token
            ids.append(base.mask_token_id())
        elif match := re.fullmatch(r"\{(\w+)\}", piece):
            name = match.group(1)
            if name not in fields:
                raise UserError(f"template field {{{name}}} is missing from the input; it has {sorted(fields)}")
            start = len(ids)
            ids += base.token_ids(fields[name], leading_space=bool(ids))
            field_spans.append((start, len(ids)))
        elif piece.strip():
            ids += base.token_ids(piece.strip(), leading_space=bool(ids) and piece[0].isspace())
    begin, end = base.special_tokens()
    if max_length is not None and field_spans:
        excess = len(ids) + len(begin) + len(end) - max_length
        if excess > 0:  # shorten the longest field, never the prompt or the anchors
            start, stop = max(field_spans, key=lambda span: span[1] - span[0])
            cut = min(excess, stop - start - 1)
            ids = ids[: stop - cut] + ids[stop:]
    return begin + ids + end


def build(config: PTuningConfig, base: Base) -> Task:
    kind = {"lstm": "lstm", "mlp": "mlp-relu", "none": "table"}[config.encoder]
    encoder = make_encoder(
        kind, config.num_virtual_tokens, base.hidden_size, config.encoder_hidden_size, base.hidden_size
    )
    if kind == "table":
        with torch.no_grad():
            encoder.weight.uniform_(-0.5, 0.5)
    if config.template is None:
        return Task(config, base, input_prompt=InputPrompt(encoder, "prefix"))
    prompt = InputPrompt(encoder, "slots", lead_slots=config.leading_slots())
    return Task(config, base, input_prompt=prompt, render=partial(render, config.template))
