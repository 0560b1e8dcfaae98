"""Assembling the input sequence when soft tokens enter it (Prompt Tuning, P-Tuning).

Each row gets its own edit, so rows of a batch may use different tasks. Soft tokens go next to the
row's real tokens, never next to its padding: with left padding ``[pad pad x1 x2] -> [pad pad E x1
x2]``, with right padding ``[x1 x2 pad] -> [E x1 x2 pad]``. Template slots (P-Tuning ids
``-(i + 1)``) are swapped in place. Leading tokens whose keys and values are reused as a prefix are
dropped. Rows that end up shorter than the longest get the difference as extra padding on the
padding side. :class:`Assembled` remembers where every caller position went, so outputs and labels
map back to the caller's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowEdit:
    """How one row's input changes."""

    insert: torch.Tensor | None = None  # (P, H) soft tokens to insert
    at: str = "prefix"  # where: prefix (before the real tokens), after_bos (after the first), suffix (after the last)
    slots: torch.Tensor | None = None  # (S, H): a template slot id -(i + 1) takes slots[i]
    drop: int = 0  # leading real tokens that a reused key/value prefix stands for


@dataclass
class Assembled:
    embeds: torch.Tensor  # (B, T', H)
    mask: torch.Tensor  # (B, T')
    origin: torch.Tensor  # (B, T): the new position each caller position's output is read from
    source: torch.Tensor  # (B, T'): the caller position of each new position, -1 for soft tokens and filler

    @property
    def moved(self) -> bool:
        """Whether any caller position moved (otherwise outputs need no gathering)."""
        return self.embeds.shape[1] != self.origin.shape[1] or not bool(
            (self.origin == torch.arange(self.origin.shape[1], device=self.origin.device)).all()
        )

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, T', ...) -> (B, T, ...): the outputs at the caller's token positions."""
        index = self.origin.view(*self.origin.shape, *([1] * (tensor.dim() - 2)))
        return tensor.gather(1, index.expand(-1, -1, *tensor.shape[2:]))

    def spread(self, tensor: torch.Tensor, fill: int | float) -> torch.Tensor:
        """(B, T) -> (B, T'): per-token inputs (labels, token types) at their new positions."""
        padded = torch.cat([tensor, tensor.new_full((tensor.shape[0], 1), fill)], dim=1)
        return padded.gather(1, torch.where(self.source < 0, tensor.shape[1], self.source))


def _row_layout(edit: RowEdit | None, real: list[int], length: int) -> list[int]:
    """The new order of one row's real segment: caller positions, and -(j + 1) for soft token j."""
    if edit is None:
        return real
    if edit.drop > len(real):
        raise ValueError(f"a row has {len(real)} real tokens but its prompt stands for {edit.drop} leading ones")
    kept = real[edit.drop :]
    if edit.insert is None:
        return kept
    soft = [-(j + 1) for j in range(edit.insert.shape[0])]
    at = {"prefix": 0, "after_bos": min(1, len(kept)), "suffix": len(kept)}[edit.at]
    return kept[:at] + soft + kept[at:]


def assemble(
    embeds: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor, edits: list[RowEdit | None], left: bool
) -> Assembled:
    """embeds (B, T, H), mask (B, T), input_ids (B, T) with template slots as negative ids.

    left: whether padding (and filler) goes on the left, as for decoder-only models.
    """
    batch, length, hidden = embeds.shape
    device = embeds.device
    slot_rows = [b for b, e in enumerate(edits) if e is not None and e.slots is not None]
    if slot_rows:
        embeds = embeds.clone()
        for b in slot_rows:
            where = (input_ids[b] < 0).nonzero().flatten()
            index = -input_ids[b, where] - 1
            table = edits[b].slots
            if len(where) and int(index.max()) >= table.shape[0]:
                raise ValueError(f"row {b} has slot {int(index.max())} but its prompt has {table.shape[0]} tokens")
            embeds[b, where] = table[index].to(embeds.dtype)

    reals = [mask[b].nonzero().flatten().tolist() for b in range(batch)]
    layouts = [_row_layout(edits[b], reals[b], length) for b in range(batch)]
    pads = [length - len(r) for r in reals]
    new_length = max(p + len(l) for p, l in zip(pads, layouts))
    zero_row = batch * length
    table = [embeds.reshape(batch * length, hidden), embeds.new_zeros(1, hidden)]
    offset = zero_row + 1
    index = torch.full((batch, new_length), zero_row, dtype=torch.long)
    source = torch.full((batch, new_length), -1, dtype=torch.long)
    new_mask = torch.zeros(batch, new_length, dtype=mask.dtype)
    origin = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        layout, real = layouts[b], reals[b]
        start = new_length - len(layout) if left else 0
        pad_positions = [i for i in range(length) if i not in set(real)]
        # Padding keeps its order on its side of the real segment.
        pad_slots = list(range(start - len(pad_positions), start)) if left else list(range(len(layout), len(layout) + len(pad_positions)))
        soft_base = offset
        for new, old in enumerate(layout, start=start):
            if old >= 0:
                index[b, new] = b * length + old
                source[b, new] = old
                new_mask[b, new] = 1
                origin[b, old] = new
            else:
                index[b, new] = soft_base + (-old - 1)
                new_mask[b, new] = 1
        for new, old in zip(pad_slots, pad_positions):
            index[b, new] = b * length + old
            source[b, new] = old
            origin[b, old] = new
        edit = edits[b]
        if edit is not None and edit.insert is not None:
            table.append(edit.insert.to(embeds.dtype))
            offset += edit.insert.shape[0]
        if edit is not None and edit.drop:
            # Dropped tokens live on in the prefix; their outputs are read at the first kept position.
            first = next((origin[b, p] for p in real[edit.drop :]), torch.tensor(start))
            for old in real[: edit.drop]:
                origin[b, old] = first
    new_embeds = torch.cat(table)[index.to(device)]  # (B, T', H)
    return Assembled(new_embeds, new_mask.to(device), origin.to(device), source.to(device))
