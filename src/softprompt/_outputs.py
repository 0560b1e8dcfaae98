"""From the base model's outputs to a task's: fresh heads, label words, and the LM head's positions.

A fresh linear head reads the backbone's last hidden states, pooled at the family's token ([CLS] or
the last real token) or per token. Label words are scored by the LM head at [MASK] (masked LMs) or
as the token after the last real one (causal LMs). When soft tokens open every row of a causal LM,
the LM head needs only the caller's positions and the one before the first of them (which predicts
it): :func:`lm_window` finds those positions, so the head never runs on the soft tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from ._inputs import Assembled
from ._task import Base
from .errors import UserError


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): the last real token; with right padding the one before the first pad, with left padding the last column."""
    return mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)


def lm_window(assembled: Assembled | None, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per row, the T + 1 consecutive positions that hold the caller's tokens and the one before them.

    (keep (B, T + 1), rows whose first token nothing precedes (B,) bool), or None where the caller's
    tokens are not consecutive (soft tokens after the first or the last token) or did not move.
    """
    if assembled is None or not assembled.moved:
        return None
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    length = input_ids.shape[1]
    first = mask.long().argmax(-1)  # (B,) the first real caller position
    start = assembled.origin.gather(1, first[:, None])[:, 0] - first - 1  # (B,)
    steps = torch.arange(length + 1, device=start.device)
    if not bool((assembled.origin == start[:, None] + 1 + steps[None, :length])[mask.bool()].all()):
        return None
    return (start[:, None] + steps[None]).clamp(min=0), start < 0


def score_positions(base: Base, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) where label words are scored: the [MASK] of a masked LM, else the last real token."""
    if base.family.score_at == "mask":
        hits = input_ids == base.mask_token_id()
        if not bool(hits.any(-1).all()):
            raise UserError("every row needs a [MASK] token where the label word is scored")
        return hits.long().argmax(-1)
    return last_real(attention_mask if attention_mask is not None else torch.ones_like(input_ids))


def label_logits(words: list[torch.Tensor | None], logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(B, number of labels): each row's label-word logits at its scored position; -inf past a row's labels."""
    rows = torch.arange(len(words), device=logits.device)
    scored = logits[rows, where]  # (B, V)
    width = max(len(w) for w in words if w is not None)
    out = scored.new_full((len(words), width), float("-inf"))
    for row, ids in enumerate(words):
        if ids is not None:
            out[row, : len(ids)] = scored[row, ids]
    return out


def pool(hidden: torch.Tensor, mask: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """(B, T, H) -> (B, H): each row pooled its way: first real token, last real token, or mean of the real ones."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, last_real(mask)]
    if "first" in kinds:
        first = hidden[rows, mask.long().argmax(-1)]
        pooled = torch.where(torch.tensor([k == "first" for k in kinds], device=hidden.device)[:, None], first, pooled)
    if "mean" in kinds:
        weights = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        pooled = torch.where(torch.tensor([k == "mean" for k in kinds], device=hidden.device)[:, None], mean, pooled)
    return pooled


def head_forward(base: Base, tasks: nn.ModuleDict, names: list[str], inputs: dict, assembled: Assembled | None,
                 labels: torch.Tensor | None, attention_mask: torch.Tensor | None):
    """Each row's fresh head on the backbone's hidden states (pooled for sequence classification)."""
    hidden = base.model.base_model(**inputs).last_hidden_state  # (B, T', H)
    if assembled is not None:
        hidden = assembled.gather(hidden)  # (B, T, H)
    kind = tasks[names[0]].config.head
    if kind == "sequence-classification":
        mask = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
        hidden = pool(hidden, mask, [base.pooling(tasks[n].config.pooling) for n in names])  # (B, H)
    width = max(tasks[n].config.num_labels for n in names)
    logits = hidden.new_full((*hidden.shape[:-1], width), float("-inf"), dtype=torch.float32)
    for name in dict.fromkeys(names):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=hidden.device)
        head = tasks[name].head
        logits[rows, ..., : head.classifier.out_features] = head(hidden[rows].float())
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.reshape(-1, width), labels.reshape(-1), ignore_index=-100)
    cls = SequenceClassifierOutput if kind == "sequence-classification" else TokenClassifierOutput
    return cls(loss=loss, logits=logits)
