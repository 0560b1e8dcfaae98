"""Prompt Tuning (Lester, Al-Rfou & Constant 2021): P trainable soft tokens in the input.

The input embeddings X (T, H) become [E; X] (or X with E after the first token, or [X; E]) with
E (P, H) a plain table, started from uniform [-0.5, 0.5] noise, the embeddings of frequent
vocabulary tokens, of a text, or of the class-label words (the paper's best start).
"""

from __future__ import annotations

import torch

from .._parts import InputPrompt, Table
from .._task import Base, Task
from ..config import PromptTuningConfig


def initial_table(config: PromptTuningConfig, base: Base) -> torch.Tensor:
    num = config.num_virtual_tokens
    if base.loading:
        return torch.zeros(num, base.hidden_size)
    if config.init == "random":
        return torch.empty(num, base.hidden_size).uniform_(-0.5, 0.5)
    if config.init == "text":
        ids = base.token_ids(config.init_text)
    elif config.init == "labels":
        ids = base.label_word_ids(config)
    else:
        ids = []
    # Fill what the text or the label words leave with sampled frequent vocabulary, as the paper does.
    ids = (ids * (num // max(len(ids), 1) + 1))[:num] if config.init == "text" else ids[:num]
    ids = ids + base.frequent_token_ids(num - len(ids))
    return base.embed(torch.tensor(ids))


def build(config: PromptTuningConfig, base: Base) -> Task:
    prompt = InputPrompt(Table(initial_table(config, base)), config.placement)
    return Task(config, base, input_prompt=prompt)
