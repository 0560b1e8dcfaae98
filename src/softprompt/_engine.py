"""The batching engine behind ``softprompt serve``: one thread owns the model and runs every request.

Rows of any task share each forward: a row's task travels with the call (``PromptModel.prepare``),
so one batch mixes prompts of every method with the base model's own rows (:class:`NoPrompt`).
Scheduling is iteration-level, as in transformers' continuous batching: a request waits in a queue,
is prefilled with whatever else arrived, joins the running batch at the next decoding step, and
leaves as soon as it ends (a stop token, its token budget, or cancellation) without waiting for the
others. transformers' paged cache assumes the plain model's attention, so the batch keeps one
``DynamicCache`` instead: a joining group's keys and values are left-padded along the sequence axis
to the batch's length and concatenated along the batch axis, the padding hidden by zeros in the
attention mask; a leaving row is index-selected away, and columns that no remaining row uses are cut
from the left. Positions are counted from the mask, so neither moves a row's numbers. Classification
requests (one forward each) are batched between decoding steps, and anything else that touches the
model -- loading or unloading a prompt -- runs in the same thread between steps (:meth:`Engine.call`).
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ._attention import KWARG, Prompts
from ._parts import Entered
from .errors import UserError
from .model import PromptModel, pad_rows

Event = Literal["token", "finish", "error"]


class QueueFull(RuntimeError):
    """More requests wait than the engine queues; the caller should retry later."""


class ShuttingDown(RuntimeError):
    """The engine finishes what it holds and takes nothing new."""


class NoPrompt(nn.Module):
    """A task whose prompt enters nowhere: its rows are the base model's own, in any mixed batch."""

    config = None
    label_word_ids = None

    def enter(self, base: Any, reuse: bool) -> Entered:
        return Entered()


@dataclass(eq=False)
class Generation:
    """One row to decode: token ids in, one ``emit`` call per event out (from the engine's thread).

    Events: ``("token", id)`` per generated token, then ``("finish", "stop" | "length" | "cancelled")``,
    or ``("error", message)`` when the forward failed.
    """

    task: str
    ids: list[int]
    max_tokens: int
    emit: Callable[[Event, Any], None]
    temperature: float = 0.0
    """0 is greedy (argmax, as ``generate(do_sample=False)``)."""
    top_p: float = 1.0
    seed: int | None = None
    """Seeds this row's own sampler, so a seeded request samples the same tokens in any batch."""
    cancelled: bool = False
    ended_by: str = field(default="cancelled", init=False)
    """The finish reason a cancelled row reports: "cancelled", or "stop" where the caller met a stop string."""
    generated: int = field(default=0, init=False)
    _sampler: torch.Generator | None = field(default=None, init=False, repr=False)

    def sampler(self) -> torch.Generator:
        if self._sampler is None:
            seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**63)
            self._sampler = torch.Generator().manual_seed(seed)
        return self._sampler


@dataclass(eq=False)
class Scoring:
    """One row to classify: ``done`` gets its logits, (C,) per row or (T, C) per real token, or the error."""

    task: str
    ids: list[int]
    done: Callable[[torch.Tensor | BaseException], None]


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from (V,) logits: softmax at `temperature`, kept to the smallest set whose mass reaches `top_p`."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p  # the first token is always kept
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]  # F.pad counts dimensions from the last
    return F.pad(tensor, pad)


class Engine:
    """Decodes and classifies the rows of every task in shared forwards, in a thread of its own."""

    def __init__(self, pm: PromptModel, max_batch_size: int = 16, max_queue: int = 64,
                 on_step: Callable[[str, int, int], None] | None = None,
                 on_finish: Callable[[str], None] | None = None) -> None:
        """on_step(kind, rows, tokens): after each forward ("prefill", "decode" or "classify");
        on_finish(reason): as each generated row ends ("stop", "length", "cancelled" or "error")."""
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be at least 1")
        self.pm = pm
        self.model = pm.base_model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.on_step = on_step
        self.on_finish = on_finish
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        """Stop tokens: what generate stops at, so a greedy row ends where generate's does."""
        self.pad_id = pm._pad_id()
        self.device = next(self.model.parameters()).device
        parameters = inspect.signature(self.model.forward).parameters
        self._keeps_logits = "logits_to_keep" in parameters
        self._cache_key = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5.24
        _check_layers(DynamicCache(config=self.model.config))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: deque[Generation] = deque()
        self._scoring: deque[Scoring] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._retiring: set[str] = set()
        # The running batch, row i of the cache is self._rows[i].
        self._rows: list[Generation] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (B, S): which cache columns each row attends to
        self._last: torch.Tensor | None = None  # (B, 1): each row's latest token, the next step's input
        self._step: dict[str, Any] | None = None  # the last decoding step's inputs, while no row has joined since
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- the caller's side (any thread) --------------------------------------------------------
    @property
    def active(self) -> int:
        """Rows in the running batch."""
        return len(self._rows)

    @property
    def alive(self) -> bool:
        """Whether the engine's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Rows queued for the next prefill or classification forward."""
        return len(self._waiting) + len(self._scoring)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take nothing new, finish every row already taken, then end the thread."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, rows: list[Generation] | list[Scoring]) -> None:
        """Queue rows (all or none); QueueFull when the queue would exceed max_queue."""
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if self.waiting + len(rows) > self.max_queue:
                raise QueueFull(f"{self.waiting} rows wait already (at most {self.max_queue}); retry shortly")
            for row in rows:
                (self._scoring if isinstance(row, Scoring) else self._waiting).append(row)
        self._wake.set()

    def cancel(self, row: Generation, reason: str = "cancelled") -> None:
        """Free the row at the next step (its emit gets ("finish", reason) unless it ended before)."""
        if not row.cancelled:
            row.ended_by, row.cancelled = reason, True
        self._wake.set()

    def call(self, function: Callable[[], Any]) -> Future:
        """Run `function` in the engine's thread between two steps (nothing else touches the model then)."""
        future: Future = Future()
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._calls.append((function, future))
        self._wake.set()
        return future

    def retire(self, task: str) -> None:
        """Remove `task` from the model once no queued or running row uses it."""
        with self._lock:
            self._retiring.add(task)
        self._wake.set()

    def run_pending(self) -> None:
        """Run every queued row to its end in the calling thread, for measurements without the engine's thread."""
        if self.alive:
            raise RuntimeError("the engine's thread is running; run_pending is for an engine that was not started")
        with torch.no_grad():
            while self._waiting or self._scoring or self._rows:
                self._classify()
                self._admit()
                self._decode()

    # -- the engine's thread -------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                self._wake.clear()
                self._run_calls()
                self._remove_retired()
                worked = self._classify()
                worked = self._admit() or worked
                worked = self._decode() or worked
                if not worked:
                    with self._lock:
                        idle = not (self._waiting or self._scoring or self._calls or self._rows or self._retiring)
                        if self._stopping and idle:
                            return
                    self._wake.wait(0.05)

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                function, future = self._calls.popleft()
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the caller, who reports it
                future.set_exception(exc)

    def _remove_retired(self) -> None:
        with self._lock:
            if not self._retiring:
                return
            used = {row.task for row in (*self._rows, *self._waiting, *self._scoring)}
            for task in self._retiring - used:
                self._retiring.discard(task)
                if task in self.pm.tasks:
                    del self.pm.tasks[task]

    def _classify(self) -> bool:
        with self._lock:
            if not self._scoring:
                return False
            head = self._head(self._scoring[0].task)
            rows, others = [], deque()
            while self._scoring:
                row = self._scoring.popleft()
                # One forward takes rows whose tasks use a head of one kind (or none), as PromptModel requires.
                (rows if len(rows) < self.max_batch_size and self._head(row.task) == head else others).append(row)
            self._scoring = others
        try:
            batch = pad_rows([r.ids for r in rows], self.pad_id, left=self.pm.family.pad_side == "left")
            out = self.pm(**{k: v.to(self.device) for k, v in batch.items()}, task=[r.task for r in rows])
            logits = out["label_logits"] if out.get("label_logits") is not None else out["logits"]
            for i, row in enumerate(rows):
                # (C,) for a sequence, (T, C) over the row's real tokens for token classification
                row.done(logits[i].float().cpu() if logits.dim() == 2 else logits[i][batch["attention_mask"][i].bool()].float().cpu())
        except Exception as exc:
            for row in rows:
                row.done(exc)
        self._report("classify", len(rows), 0)
        return True

    def _head(self, task: str) -> str | None:
        config = getattr(self.pm.tasks[task], "config", None) if task in self.pm.tasks else None
        return getattr(config, "head", None)

    def _admit(self) -> bool:
        """Prefill the waiting rows that fit into the batch; they join it at the next decoding step."""
        room = self.max_batch_size - len(self._rows)
        rows: list[Generation] = []
        with self._lock:
            while self._waiting and len(rows) < room:
                row = self._waiting.popleft()
                if row.cancelled:
                    self._emit(row, "finish", row.ended_by)
                else:
                    rows.append(row)
        if not rows:
            return False
        try:
            batch = pad_rows([r.ids for r in rows], self.pad_id, left=True)
            inputs = self.pm.prepare(**{k: v.to(self.device) for k, v in batch.items()}, task=[r.task for r in rows],
                                     **{self._cache_key: DynamicCache(config=self.model.config)}, use_cache=True)
            if self._keeps_logits:
                inputs["logits_to_keep"] = 1
            logits = self.model(**inputs).logits[:, -1]  # (B, V)
            cache = inputs[self._cache_key]
            mask = inputs["attention_mask"]  # soft tokens that entered the input widen it: the cache holds them
        except Exception as exc:
            for row in rows:
                self._emit(row, "error", _message(exc))
            return True
        tokens = self._sample(logits, rows)
        keep = self._deliver(rows, tokens)
        self._report("prefill", len(rows), len(rows))
        if keep:
            index = torch.tensor(keep, device=self.device)
            cache.batch_select_indices(index)
            self._join(cache, mask[index], torch.tensor(tokens, device=self.device)[index][:, None], [rows[i] for i in keep])
        return True

    def _join(self, cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor, rows: list[Generation]) -> None:
        self._step = None
        if self._cache is None:
            self._cache, self._mask, self._last, self._rows = cache, mask, last, rows
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])  # (B, KVH, S, D)
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(mask, length, 1)])  # (B, S)
        self._last = torch.cat([self._last, last])
        self._rows = self._rows + rows

    def _decode(self) -> bool:
        """One decoding step of the running batch."""
        self._select([i for i, row in enumerate(self._rows) if not self._ended(row)])
        if not self._rows:
            return False
        rows = self._rows
        mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)  # (B, S + 1)
        try:
            if self._step is None:
                inputs = self.pm.prepare(input_ids=self._last, attention_mask=mask, task=[r.task for r in rows],
                                         **{self._cache_key: self._cache}, use_cache=True)
            else:
                # Until a row joins, a step's inputs are the last step's one token on (the next tokens, one more
                # mask column, positions one further, as generate continues them) with the same prompts: the
                # per-row prefix tables of a mixed batch are built once, not at every step.
                inputs = {**self._step, "input_ids": self._last, "attention_mask": mask}
                if inputs.get("position_ids") is not None:
                    inputs["position_ids"] = inputs["position_ids"] + 1  # (B, 1)
            self._step = inputs
            logits = self.model(**inputs).logits[:, -1]  # (B, V)
        except Exception as exc:
            for row in rows:
                self._emit(row, "error", _message(exc))
            self._select([])
            return True
        self._mask = mask
        tokens = self._sample(logits, rows)
        keep = self._deliver(rows, tokens)
        self._last = torch.tensor(tokens, device=self.device)[:, None]
        self._report("decode", len(rows), len(rows))
        self._select(keep)
        return True

    def _ended(self, row: Generation) -> bool:
        if row.cancelled:
            self._emit(row, "finish", row.ended_by)
        return row.cancelled

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep` of the batch, and drop the cache columns none of them attends to."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._last, self._step = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        if self._step is not None:
            step = dict(self._step)
            if step.get(KWARG) is not None:
                step[KWARG] = _select_prompts(step[KWARG], index)
            if step.get("position_ids") is not None:
                step["position_ids"] = step["position_ids"][index]
            self._step = step
        self._mask, self._last = self._mask[index], self._last[index]
        self._rows = [self._rows[i] for i in keep]
        start = int(self._mask.any(0).long().argmax())  # the first column a row still attends to
        if start:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._mask = self._mask[:, start:]

    def _sample(self, logits: torch.Tensor, rows: list[Generation]) -> list[int]:
        tokens = logits.float().argmax(-1).tolist()  # greedy rows: generate's argmax over float32 logits
        for i, row in enumerate(rows):
            if row.temperature > 0:
                tokens[i] = sample(logits[i], row.temperature, row.top_p, row.sampler())
        return tokens

    def _deliver(self, rows: list[Generation], tokens: list[int]) -> list[int]:
        """Hand each row its token; the indices of the rows that go on."""
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens)):
            row.generated += 1
            self._emit(row, "token", token)
            if token in self.eos:
                self._emit(row, "finish", "stop")
            elif row.generated >= row.max_tokens:
                self._emit(row, "finish", "length")
            elif not self._ended(row):
                keep.append(i)
        return keep

    def _emit(self, row: Generation, event: Event, value: Any) -> None:
        try:
            row.emit(event, value)
        except Exception:  # a listener that is gone: stop decoding for it
            row.cancelled = True
        if event != "token" and self.on_finish is not None:
            self.on_finish(value if event == "finish" else "error")

    def _report(self, kind: str, rows: int, tokens: int) -> None:
        if self.on_step is not None:
            self.on_step(kind, rows, tokens)


def _select_prompts(prompts: Prompts, index: torch.Tensor) -> Prompts:
    """The prefixes of rows `index` of a call's prompts (a prefix shared by every row stays as it is)."""

    def rows(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor if tensor is None or tensor.shape[0] == 1 else tensor[index]

    return Prompts({module: dataclasses.replace(prefix, key=rows(prefix.key), value=rows(prefix.value),
                                                mask=rows(prefix.mask), positions=rows(prefix.positions))
                    for module, prefix in prompts.prefixes.items()})


def _check_layers(cache: DynamicCache) -> None:
    """Rows are merged by padding full key/value layers; a sliding-window layer keeps a window instead."""
    odd = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    if odd:
        raise UserError(f"serving batches rows of full-attention models only; this model's cache has {odd} layers "
                         "(sliding-window attention)")


def _message(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text


__all__ = ["Engine", "Generation", "NoPrompt", "QueueFull", "Scoring", "ShuttingDown", "sample"]
