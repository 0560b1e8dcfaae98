"""One call's inputs: where each row's prompt enters, turned into the base model's own inputs.

Each row's task says where its prompt enters (``Task.enter``): a key/value prefix for attention
modules, an edit of the row's input, or both. :func:`prepare` combines the rows of a call without
knowing the methods: the edits assemble the input sequence (:mod:`softprompt._inputs`), the
prefixes of all rows are stacked per attention module (padded and masked where rows have prompts
of different lengths), and positions are counted from the attention mask, after the prefix as after
a cached past. A call that continues a cache (a decoding step) gets its prefixes only: its input
edits are in the cache already.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import _ALWAYS_VISIBLE, Prefix, Prompts
from ._inputs import Assembled, RowEdit, assemble
from ._parts import Entered
from ._task import Base
from .errors import UserError


@dataclass
class Call:
    inputs: dict  # the base model's keyword arguments (prompts not included)
    assembled: Assembled | None  # how the input sequence was rebuilt, None when it was not
    prompts: Prompts | None  # the call's prefixes, None when it has none


def prepare(base: Base, tasks: nn.ModuleDict, names: list[str], input_ids, attention_mask, kwargs: dict,
            reuse: bool, takes_positions: bool) -> Call:
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    continuing = cache is not None and cache.get_seq_length() > 0
    entered = _enter(base, tasks, names, input_ids, attention_mask, reuse, continuing)
    edits = [None if continuing else entered[n].edit for n in names]
    inputs = dict(kwargs)
    assembled = None
    if any(e is not None for e in edits):
        if input_ids is None:
            raise UserError("soft input tokens need input_ids (inputs_embeds alone cannot be placed)")
        _check_slots(names, edits, input_ids)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        embeds = base.model.get_input_embeddings()(input_ids.clamp(min=0))
        assembled = assemble(embeds, mask, input_ids, edits, left=_pads_left(mask, base.family.pad_side))
        inputs.update(inputs_embeds=assembled.embeds, attention_mask=assembled.mask)
        if (types := inputs.get("token_type_ids")) is not None:
            inputs["token_type_ids"] = assembled.spread(types, 0)
        if (given := inputs.get("position_ids")) is not None:
            inputs["position_ids"] = assembled.spread(given, 0)
        mask = assembled.mask
    else:
        if input_ids is not None and bool((input_ids < 0).any()):
            bad = sorted({n for n, row in zip(names, input_ids) if bool((row < 0).any())})
            raise UserError(f"input_ids hold template slots (negative ids) but task(s) {bad} have no P-Tuning template")
        inputs.update(input_ids=input_ids, attention_mask=attention_mask)
        mask = attention_mask
    if takes_positions:
        add_positions(base, inputs, mask, [entered[n].length for n in names])
    check_positions(base, inputs)
    return Call(inputs, assembled, stack_prefixes(names, entered))


def _enter(base: Base, tasks: nn.ModuleDict, names: list[str], input_ids: torch.Tensor | None,
           mask: torch.Tensor | None, reuse: bool, continuing: bool) -> dict[str, Entered]:
    """Each task's entry into this call; reused prefixes only where every row starts as they assume.

    A continuation keeps what the first step chose (its leading tokens are in the cache).
    """
    entered = {name: tasks[name].enter(base, reuse) for name in dict.fromkeys(names)}
    if continuing:
        return entered
    for name, entry in list(entered.items()):
        if entry.lead and not _rows_start_with(input_ids, mask, names, name, entry.lead):
            entered[name] = tasks[name].enter(base, False)
    return entered


def _pads_left(mask: torch.Tensor, side: str) -> bool:
    if bool((mask[:, 0] == 0).any()):
        return True
    if bool((mask[:, -1] == 0).any()):
        return False
    return side == "left"


def stack_prefixes(names: list[str], entered: dict[str, Entered]) -> Prompts | None:
    """Each attention module's prefix for the rows of this call: (B|1, KVH, P_max, D) and a (B, P_max) mask."""
    modules = list(dict.fromkeys(m for e in entered.values() for m in e.prefix))
    if not modules:
        return None
    used = list(entered)
    prefixes = {}
    if len(used) == 1:
        only = entered[used[0]]
        for module in modules:
            kv = only.prefix[module]  # (2, KVH, P, D)
            positions = torch.arange(kv.shape[2], device=kv.device)[None] if only.windowed else None
            prefixes[module] = Prefix(kv[0][None], kv[1][None], None, positions)
        return Prompts(prefixes)
    rows = torch.tensor([used.index(n) for n in names])
    windowed = any(entered[n].windowed for n in used)
    for module in modules:
        some = next(e.prefix[module] for e in entered.values() if module in e.prefix)
        lengths = [entered[n].prefix[module].shape[2] if module in entered[n].prefix else 0 for n in used]
        longest = max(lengths)
        table = torch.stack([
            F.pad(entered[n].prefix[module], (0, 0, 0, longest - size)) if size
            else some.new_zeros(*some.shape[:2], longest, some.shape[3])
            for n, size in zip(used, lengths)
        ])  # (tasks, 2, KVH, P_max, D)
        index = rows.to(some.device)
        kv = table[index]  # (B, 2, KVH, P_max, D)
        columns = torch.arange(longest, device=some.device)
        mask = columns[None] < torch.tensor(lengths, device=some.device)[index][:, None]  # (B, P_max)
        positions = None
        if windowed:
            flags = torch.tensor([entered[n].windowed for n in used], device=some.device)[index]
            positions = torch.where(flags[:, None], columns[None], _ALWAYS_VISIBLE)
        prefixes[module] = Prefix(kv[:, 0], kv[:, 1], None if bool(mask.all()) else mask, positions)
    return Prompts(prefixes)


def add_positions(base: Base, inputs: dict, mask: torch.Tensor | None, shifts: list[int]) -> None:
    """Count positions from the mask, so padding shifts nothing.

    A key/value prefix stands where a cached past of P tokens would (as in both papers'
    implementations and in PEFT), so the row's real tokens are numbered from P.
    """
    offset = base.family.position_offset
    if inputs.get("position_ids") is not None or offset is None:
        return
    if mask is None and any(shifts):
        mask = torch.ones_like(inputs["input_ids"])
    if mask is not None:
        shift = torch.tensor(shifts, device=mask.device)[:, None]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0) + offset + shift
        tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
        inputs["position_ids"] = positions[:, -tokens.shape[1] :]  # a continuation's mask covers the cache


def check_positions(base: Base, inputs: dict) -> None:
    """An input (with its prompt) longer than the model's learned positions is an error naming the limit."""
    attribute = base.family.position_limit
    limit = getattr(base.model.config, attribute, None) if attribute else None
    if limit is None:
        return
    offset = base.family.position_offset or 0
    positions = inputs.get("position_ids")
    if positions is not None:
        last = int(positions.max()) - offset
    else:
        tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        last = tokens.shape[1] - 1
    if last >= limit - offset:
        raise UserError(
            f"the input and its prompt need {last + 1} positions but {base.model.config.model_type} has "
            f"{limit - offset}; shorten the inputs (softprompt train/eval: --max-length) or use fewer virtual tokens"
        )


def _rows_start_with(input_ids, mask, names: list[str], name: str, lead: tuple[int, ...]) -> bool:
    """Whether every row of task `name` starts (after its padding) with the ids `lead`."""
    if input_ids is None:
        return False
    for row, row_name in enumerate(names):
        if row_name != name:
            continue
        ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
        if ids[: len(lead)].tolist() != list(lead):
            return False
    return True


def _check_slots(names: list[str], edits: list[RowEdit | None], input_ids: torch.Tensor) -> None:
    for row, (name, edit) in enumerate(zip(names, edits)):
        has_slots = bool((input_ids[row] < 0).any())
        wants_slots = edit is not None and edit.slots is not None
        if wants_slots and not has_slots:
            raise UserError(
                f"row {row} (task {name!r}): a P-Tuning template needs its slots in the input; render the rows "
                "with PromptModel.tokenize, or use PTuningConfig(num_virtual_tokens=N) without a template to "
                "pass plain input_ids"
            )
        if has_slots and not wants_slots:
            raise UserError(f"row {row} (task {name!r}) holds template slots (negative ids) but its task has no "
                             "P-Tuning template")
