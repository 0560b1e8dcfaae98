"""Prefix-Tuning (Li & Liang 2021): trainable keys and values prepended in every attention layer.

Each layer's attention becomes Attention(Q, [P_k; K], [P_v; V]). While training, the prefix is
reparameterized as P' (P, H) -> Linear(H, 512) -> Tanh -> Linear(512, L * 2 * H_kv), which the
paper found stabler than optimizing the table directly; export folds it into the table. For
encoder-decoder models the encoder self-attention, the decoder self-attention and the decoder
cross-attention each get their own prefix. The prefix may start from the keys and values that real
words ("table-to-text:") produce, which matters with little data.
"""

from __future__ import annotations

import torch

from .._parts import DeepPrompt
from .._task import Base, Task
from ..config import PrefixTuningConfig


def deep_prompt(config: PrefixTuningConfig, base: Base, layers: list[int] | None = None) -> DeepPrompt:
    start, end = layers if layers is not None else (0, None)
    shapes = base.prefix_shapes(config.stacks, start, end)
    kind = "table" if config.projection_hidden_size is None else "mlp"
    prompt = DeepPrompt(
        shapes, config.num_virtual_tokens, kind, base.hidden_size, config.projection_hidden_size,
        config.prefix_dropout, first_layer=start,
    )
    if base.loading:
        return prompt
    if kind == "table" and not config.init_text:
        for encoder in prompt.encoders.values():
            torch.nn.init.normal_(encoder.weight)  # as nn.Embedding starts, the P-Tuning v2 default
    if config.init_text:
        activations = base.word_activations(config.init_text, config.num_virtual_tokens)
        for stack, encoder in prompt.encoders.items():
            layers_of_stack = activations[stack][start : start + shapes[stack][0]]
            encoder.fit_(prompt.flatten(stack, layers_of_stack))
    return prompt


def build(config: PrefixTuningConfig, base: Base) -> Task:
    return Task(config, base, deep_prompt=deep_prompt(config, base))
