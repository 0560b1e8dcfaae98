"""The parts every method is assembled from.

A method picks (1) *where* its prompt enters -- :class:`InputPrompt`, soft tokens in the input
sequence, or :class:`DeepPrompt`, keys and values in every attention layer; (2) *how* the prompt is
parameterized -- a plain :class:`Table`, an :class:`MLPEncoder` (Linear-Tanh-Linear, Li & Liang
2021) or an :class:`LSTMEncoder` (embedding -> 2-layer bidirectional LSTM -> MLP, Liu et al. 2021);
and (3) how it starts (``init``). Every encoder maps nothing to a (P, W) table, so folding the
reparameterization away for inference is running it once and keeping the output as a Table. Each
"where" part answers one question per call, :meth:`enter`: what a row of its task gets (a
key/value prefix, an edit of its input, or both), so the model never branches on the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._inputs import RowEdit

if TYPE_CHECKING:
    from ._task import Base


class Table(nn.Module):
    """A plain (P, W) table of trainable vectors."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.weight  # (P, W)

    def fit_(self, target: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(target)


class MLPEncoder(nn.Module):
    """(P, H) embedding -> Linear(H, h) -> act -> Linear(h, W)."""

    def __init__(self, num_tokens: int, embed_dim: int, hidden: int, out_dim: int, act: str = "tanh") -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(num_tokens, embed_dim) * embed_dim**-0.5)
        activation = nn.Tanh() if act == "tanh" else nn.ReLU()
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), activation, nn.Linear(hidden, out_dim))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding)  # (P, W)

    def fit_(self, target: torch.Tensor, steps: int = 300, lr: float = 1e-2) -> None:
        """Start from `target` (P, W): regress the MLP's output onto it (the reparameterized init)."""
        fit(self, target, steps, lr)


class LSTMEncoder(nn.Module):
    """(P, H) embedding -> 2-layer bidirectional LSTM (H/2 per direction) -> MLP(H, h, W) with ReLU."""

    def __init__(self, num_tokens: int, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(num_tokens, embed_dim) * embed_dim**-0.5)
        self.lstm = nn.LSTM(embed_dim, embed_dim // 2, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * (embed_dim // 2), hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self) -> torch.Tensor:
        states, _ = self.lstm(self.embedding[None])  # (1, P, 2 * (H // 2))
        return self.mlp(states[0])  # (P, W)

    def fit_(self, target: torch.Tensor, steps: int = 300, lr: float = 1e-2) -> None:
        fit(self, target, steps, lr)


def fit(encoder: nn.Module, target: torch.Tensor, steps: int, lr: float) -> None:
    target = target.detach().to(next(encoder.parameters()).dtype)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(encoder(), target)
            loss.backward()
            optimizer.step()


def make_encoder(kind: str, num_tokens: int, embed_dim: int, hidden: int | None, out_dim: int) -> nn.Module:
    """kind: 'table', 'mlp' (Tanh, Prefix-Tuning), 'mlp-relu' (P-Tuning) or 'lstm'."""
    if kind == "table":
        return Table(torch.zeros(num_tokens, out_dim))
    if kind == "lstm":
        return LSTMEncoder(num_tokens, embed_dim, hidden or embed_dim, out_dim)
    return MLPEncoder(num_tokens, embed_dim, hidden or embed_dim, out_dim, act="relu" if kind == "mlp-relu" else "tanh")


@dataclass(frozen=True)
class Entered:
    """Where one task's prompt enters one call: what its rows get.

    A key/value prefix of `length` positions for some attention modules, an edit of each row's
    input sequence, or both. Real tokens are numbered after the prefix, as after a cached past.
    """

    prefix: dict[int, torch.Tensor] = field(default_factory=dict)  # id(attention module) -> (2, KVH, P, D)
    length: int = 0  # P
    windowed: bool = False  # the prefix stands for soft tokens at positions 0..P-1 (a sliding window applies)
    edit: RowEdit | None = None
    lead: tuple[int, ...] = ()  # the ids each row starts with, which the reused prefix stands for


class InputPrompt(nn.Module):
    """P soft tokens for the input sequence: (P, H), inserted at a placement or swapped into template slots.

    On a causal decoder, soft tokens at the very start see only each other, so at inference their
    keys and values are computed once (per prompt value) and enter as a key/value prefix instead.
    """

    def __init__(self, encoder: nn.Module, placement: str, lead_slots: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.placement = placement  # prefix | after_bos | suffix | slots
        self.lead_slots = lead_slots  # template slots before anything else (placement "slots")
        self._reused: tuple[tuple, dict[int, torch.Tensor]] | None = None

    def forward(self) -> torch.Tensor:
        return self.encoder()  # (P, H)

    def enter(self, base: Base, reuse: bool) -> Entered:
        tokens = self()  # (P, H)
        if self.placement == "slots":
            if reuse and self.lead_slots and base.family.reuses_prompt_kv and base.stacks:
                begin = base.begin_ids()
                lead = tuple(begin) + tuple(-(i + 1) for i in range(self.lead_slots))
                embeds = torch.cat([base.embed_ids(begin).to(tokens), tokens[: self.lead_slots]])
                prefix = self._reuse(base, embeds, lead)
                return Entered(prefix, len(lead), True, RowEdit(slots=tokens, drop=len(lead)), lead)
            return Entered(edit=RowEdit(slots=tokens))
        if reuse and self.placement == "prefix" and base.family.reuses_prompt_kv and base.stacks:
            return Entered(self._reuse(base, tokens, ()), tokens.shape[0], True)
        return Entered(edit=RowEdit(insert=tokens, at=self.placement))

    def _reuse(self, base: Base, embeds: torch.Tensor, lead: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """The keys and values of the leading tokens, computed once until the prompt or the model changes."""
        key = (lead, embeds.device, embeds.dtype, tuple((id(p), p._version) for p in self.parameters()), base.version())
        cached = self._reused
        if cached is None or cached[0] != key:
            cached = (key, base.prompt_kv(embeds))
            self._reused = cached
        return cached[1]


class DeepPrompt(nn.Module):
    """Keys and values for every attention layer of each stack: {stack: (L, 2, KVH, P, D)}."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, int, int]],
        num_tokens: int,
        kind: str,
        embed_dim: int,
        hidden: int | None,
        dropout: float,
        first_layer: int = 0,
    ) -> None:
        super().__init__()
        self.shapes = dict(shapes)  # stack -> (layers, kv heads, head dim)
        self.num_tokens = num_tokens
        self.first_layer = first_layer
        self.encoders = nn.ModuleDict(
            {
                stack: make_encoder(kind, num_tokens, embed_dim, hidden, 2 * layers * heads * dim)
                for stack, (layers, heads, dim) in self.shapes.items()
            }
        )
        self.dropout = nn.Dropout(dropout)

    def unflatten(self, stack: str, flat: torch.Tensor) -> torch.Tensor:
        layers, heads, dim = self.shapes[stack]
        # (P, L * 2 * KVH * D) -> (L, 2, KVH, P, D)
        return flat.view(self.num_tokens, layers, 2, heads, dim).permute(1, 2, 3, 0, 4)

    def flatten(self, stack: str, prefix: torch.Tensor) -> torch.Tensor:
        return prefix.permute(3, 0, 1, 2, 4).reshape(self.num_tokens, -1)

    def forward(self) -> dict[str, torch.Tensor]:
        return {stack: self.dropout(self.unflatten(stack, enc())) for stack, enc in self.encoders.items()}

    def enter(self, base: Base, reuse: bool) -> Entered:
        prefix = {}
        for stack, layers in self().items():
            modules = base.stacks[stack].modules[self.first_layer : self.first_layer + layers.shape[0]]
            prefix.update({id(module): kv for module, kv in zip(modules, layers)})
        return Entered(prefix, self.num_tokens)


class Head(nn.Module):
    """A fresh linear head on the last hidden states: pooled (sequence) or per token."""

    def __init__(self, kind: str, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))
