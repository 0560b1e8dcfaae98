"""Assembling the input sequence when soft tokens enter it (Prompt Tuning, P-Tuning).

Each row gets its own soft tokens, so rows of a batch may use different tasks. Soft tokens go
next to the row's real tokens, never next to its padding: with left padding
``[pad pad x1 x2] -> [pad pad E x1 x2]``, with right padding ``[x1 x2 pad] -> [E x1 x2 pad]``; rows
whose prompt is shorter than the longest get the difference as extra padding on the padding side.
Template slots (P-Tuning) are swapped in place. :class:`Assembled` remembers where every original
token went, so outputs and labels map back to the caller's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Assembled:
    embeds: torch.Tensor  # (B, T', H)
    mask: torch.Tensor  # (B, T') long
    origin: torch.Tensor  # (B, T): new position of each original token
    source: torch.Tensor  # (B, T'): original position of each new position, -1 for soft tokens and filler

    @property
    def grows(self) -> bool:
        """Whether soft tokens were inserted (template slots replace tokens in place)."""
        return self.embeds.shape[1] != self.origin.shape[1]

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, T', ...) -> (B, T, ...): the outputs at the caller's token positions."""
        if not self.grows:
            return tensor
        index = self.origin.view(*self.origin.shape, *([1] * (tensor.dim() - 2)))
        return tensor.gather(1, index.expand(-1, -1, *tensor.shape[2:]))

    def spread(self, tensor: torch.Tensor, fill: int | float) -> torch.Tensor:
        """(B, T) -> (B, T'): per-token inputs (labels, token types) at their new positions."""
        padded = torch.cat([tensor, tensor.new_full((tensor.shape[0], 1), fill)], dim=1)
        return padded.gather(1, torch.where(self.source < 0, tensor.shape[1], self.source))


def _insert_at(placement: str, mask_row: torch.Tensor) -> int:
    real = mask_row.nonzero().flatten()
    if len(real) == 0:
        return 0
    first, last = int(real[0]), int(real[-1])
    return {"prefix": first, "after_bos": first + 1, "suffix": last + 1}[placement]


def assemble(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    input_ids: torch.Tensor,
    soft: list[torch.Tensor | None],
    placements: list[str | None],
) -> Assembled:
    """embeds (B, T, H), mask (B, T); soft[b] (P_b, H) or None; placements[b] as in the config or 'slots'."""
    batch, length, hidden = embeds.shape
    device = embeds.device
    # Template slots: ids -(i + 1) take soft token i.
    slot_rows = [b for b, p in enumerate(placements) if p == "slots"]
    if slot_rows:
        embeds = embeds.clone()
        for b in slot_rows:
            where = (input_ids[b] < 0).nonzero().flatten()
            index = -input_ids[b, where] - 1
            if len(where) and int(index.max()) >= soft[b].shape[0]:
                raise ValueError(f"row {b} has slot {int(index.max())} but its prompt has {soft[b].shape[0]} tokens")
            embeds[b, where] = soft[b][index].to(embeds.dtype)
    counts = [s.shape[0] if (s is not None and p != "slots") else 0 for s, p in zip(soft, placements)]
    extra = max(counts, default=0)
    positions = torch.arange(length, device=device)
    if extra == 0:
        origin = positions.expand(batch, -1)
        return Assembled(embeds, mask, origin, origin)

    left_padded = bool((mask[:, 0] == 0).any())
    new_length = length + extra
    table = [embeds.reshape(batch * length, hidden)]
    zero_row = batch * length  # index of a zero vector for filler
    table.append(embeds.new_zeros(1, hidden))
    offset = zero_row + 1
    index = torch.full((batch, new_length), zero_row, dtype=torch.long, device=device)
    source = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
    new_mask = torch.zeros(batch, new_length, dtype=mask.dtype, device=device)
    origin = torch.empty(batch, length, dtype=torch.long, device=device)
    for b in range(batch):
        count = counts[b]
        at = _insert_at(placements[b], mask[b]) if count else length
        filler = extra - count
        start = filler if left_padded else 0  # filler joins the padding side
        before = torch.arange(at, device=device)
        after = torch.arange(at, length, device=device)
        row_origin = torch.cat([start + before, start + at + count + (after - at)])
        origin[b] = row_origin
        index[b, row_origin] = b * length + positions
        source[b, row_origin] = positions
        new_mask[b, row_origin] = mask[b]
        if count:
            soft_at = torch.arange(start + at, start + at + count, device=device)
            index[b, soft_at] = offset + torch.arange(count, device=device)
            new_mask[b, soft_at] = 1
            table.append(soft[b].to(embeds.dtype))
            offset += count
    new_embeds = torch.cat(table)[index]  # (B, T', H)
    return Assembled(new_embeds, new_mask, origin, source)
