"""Input assembly against layouts written out by hand: where soft tokens go, template slots, dropped
leading tokens, filler for rows of a mixed batch, and the maps back to the caller's positions."""

from __future__ import annotations

import torch

from softprompt._inputs import RowEdit, assemble


def _inputs(rows: list[list[int]], left: bool):
    """Embeddings that are the token ids themselves (H = 1), so layouts read as ids; 0 pads."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids.float()[..., None], mask, ids


def _soft(*values: float) -> torch.Tensor:
    return torch.tensor(values)[:, None]


def test_prefix_tokens_go_after_left_padding_and_before_right_padding():
    embeds, mask, ids = _inputs([[5, 6, 7], [8]], left=True)
    out = assemble(embeds, mask, ids, [RowEdit(_soft(-1, -2)), RowEdit(_soft(-1, -2))], left=True)
    assert out.embeds[..., 0].tolist() == [[-1, -2, 5, 6, 7], [0, 0, -1, -2, 8]]
    assert out.mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert out.origin.tolist() == [[2, 3, 4], [0, 1, 4]]
    assert out.source.tolist() == [[-1, -1, 0, 1, 2], [0, 1, -1, -1, 2]]

    embeds, mask, ids = _inputs([[5, 6, 7], [8]], left=False)
    out = assemble(embeds, mask, ids, [RowEdit(_soft(-1, -2)), RowEdit(_soft(-1, -2))], left=False)
    assert out.embeds[..., 0].tolist() == [[-1, -2, 5, 6, 7], [-1, -2, 8, 0, 0]]
    assert out.origin.tolist() == [[2, 3, 4], [2, 3, 4]]


def test_after_bos_and_suffix_placements():
    embeds, mask, ids = _inputs([[1, 6, 7]], left=False)
    after_bos = assemble(embeds, mask, ids, [RowEdit(_soft(-1), at="after_bos")], left=False)
    assert after_bos.embeds[..., 0].tolist() == [[1, -1, 6, 7]]
    suffix = assemble(embeds, mask, ids, [RowEdit(_soft(-1), at="suffix")], left=False)
    assert suffix.embeds[..., 0].tolist() == [[1, 6, 7, -1]]
    assert suffix.origin.tolist() == [[0, 1, 2]]


def test_rows_of_a_mixed_batch_get_filler_on_the_padding_side():
    embeds, mask, ids = _inputs([[5, 6], [7, 8]], left=True)
    edits = [RowEdit(_soft(-1, -2, -3)), None]
    out = assemble(embeds, mask, ids, edits, left=True)
    assert out.embeds[..., 0].tolist() == [[-1, -2, -3, 5, 6], [0, 0, 0, 7, 8]]
    assert out.mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert out.origin.tolist() == [[3, 4], [3, 4]]


def test_template_slots_are_swapped_in_place():
    embeds, mask, ids = _inputs([[-1, 5, -2, 6]], left=False)
    embeds = embeds.clamp(min=0)
    out = assemble(embeds, mask, ids, [RowEdit(slots=_soft(10, 20))], left=False)
    assert out.embeds[..., 0].tolist() == [[10, 5, 20, 6]]
    assert not out.moved


def test_dropped_leading_tokens_are_read_at_the_first_kept_position():
    # [S1 S2 x1 x2] whose first two tokens are a reused prefix: the model sees [x1 x2] (left padded).
    embeds, mask, ids = _inputs([[-1, -2, 5, 6], [-1, -2, 7]], left=True)
    embeds = embeds.clamp(min=0)
    edits = [RowEdit(slots=_soft(10, 20), drop=2)] * 2
    out = assemble(embeds, mask, ids, edits, left=True)
    assert out.embeds[..., 0].tolist() == [[5, 6], [0, 7]]
    assert out.mask.tolist() == [[1, 1], [0, 1]]
    assert out.origin.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]


def test_spread_and_gather_map_between_caller_and_model_positions():
    embeds, mask, ids = _inputs([[5, 6, 7]], left=False)
    out = assemble(embeds, mask, ids, [RowEdit(_soft(-1))], left=False)
    labels = torch.tensor([[50, 60, 70]])
    assert out.spread(labels, -100).tolist() == [[-100, 50, 60, 70]]
    assert out.gather(out.embeds)[..., 0].tolist() == [[5, 6, 7]]
