"""A task: one prompt (and optionally a head or label words) on the shared frozen model.

:class:`Base` describes the frozen model to the method builders: its family, attention stacks,
hidden size, and the tokenizer-backed helpers the initializers need. :class:`Task` holds the parts
a method picked; its parameters and buffers are the task's whole trainable state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ._attention import KWARG, Prompts
from ._families import attention_stacks, family_of
from ._parts import DeepPrompt, Entered, Head, InputPrompt
from .config import TaskConfig
from .errors import UserError

_FREQUENT = 5000  # Lester et al. sample from the 5,000 most frequent tokens


class Base:
    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.family = family_of(model)
        self.layout = self.family.layout
        self.stacks = {} if self.family.prefix_unsupported else attention_stacks(model)
        self.hidden_size = model.get_input_embeddings().embedding_dim
        self._declared_pooling = declared_pooling(getattr(model, "name_or_path", "") or "")
        self._weights = list(model.parameters())  # listed once: walking the modules per call costs ~0.5 ms
        self.loading = False  # rebuilding a saved task: skip initializers, the checkpoint fills the values

    # -- tokenizer-backed helpers -------------------------------------------------------------
    def _tokenizer(self, why: str):
        if self.tokenizer is None:
            raise UserError(f"{why} needs a tokenizer: pass tokenizer=... to softprompt.attach")
        return self.tokenizer

    def token_ids(self, text: str, leading_space: bool = False) -> list[int]:
        tokenizer = self._tokenizer("tokenizing text")
        return tokenizer((" " + text) if leading_space else text, add_special_tokens=False)["input_ids"]

    def label_word_ids(self, config: TaskConfig) -> list[int]:
        words = config.label_words or config.labels or []
        if self.loading:
            return [0] * len(words)
        ids = []
        for word in words:
            pieces = self.token_ids(word, leading_space=True)
            # A lone leading-space piece (SentencePiece's "▁") carries no meaning: score the word itself.
            meaningful = [i for i in pieces if self.tokenizer.decode([i]).strip()]
            if not meaningful:
                raise UserError(f"label word {word!r} has no token")
            ids.append(meaningful[0])
        if len(set(ids)) != len(ids):
            raise UserError(f"label words {list(words)} share a first token; pick words that start differently")
        return ids

    def frequent_token_ids(self, count: int) -> list[int]:
        if count <= 0:
            return []
        vocab = self.model.get_input_embeddings().num_embeddings
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        candidates = torch.tensor([i for i in range(min(vocab, _FREQUENT + len(special))) if i not in special])
        return candidates[torch.randperm(len(candidates))[:count] % len(candidates)].tolist()

    def mask_token_id(self) -> int:
        mask = getattr(self._tokenizer("a [MASK] in a template"), "mask_token_id", None)
        if mask is None:
            raise UserError("[MASK] in a template needs a tokenizer with a mask token")
        return mask

    def special_tokens(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text."""
        tokenizer = self._tokenizer("rendering a template")
        ids = tokenizer("", add_special_tokens=True)["input_ids"]
        starts = {tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)} - {None}
        begin = [i for i in ids[:1] if i in starts]
        return begin, ids[len(begin) :]

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.get_input_embeddings()
        return embeddings(ids.to(embeddings.weight.device)).float().cpu()

    # -- attention stacks ---------------------------------------------------------------------
    def prefix_shapes(self, stacks: list[str] | None, start: int, end: int | None) -> dict[str, tuple[int, int, int]]:
        if self.family.prefix_unsupported:
            raise UserError(self.family.prefix_unsupported)
        chosen = stacks or list(self.stacks)
        missing = [s for s in chosen if s not in self.stacks]
        if missing:
            raise UserError(f"{self.model.config.model_type} has no {missing} attention; it has {list(self.stacks)}")
        shapes = {}
        for stack in chosen:
            shape = self.stacks[stack]
            stop = shape.num_layers if end is None else end
            if stop > shape.num_layers or start >= stop:
                raise UserError(f"layers [{start}, {stop}) outside the {shape.num_layers} layers of the {stack} stack")
            shapes[stack] = (stop - start, shape.kv_heads, shape.head_dim)
        return shapes

    def pooling(self, choice: str) -> str:
        """The pooling `choice` ("auto" or a kind) resolved for this model: first, last or mean."""
        if choice != "auto":
            return choice
        return self._declared_pooling or self.family.pool

    def begin_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text ([] without a tokenizer)."""
        return self.special_tokens()[0] if self.tokenizer is not None else []

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        embeddings = self.model.get_input_embeddings()
        return embeddings(torch.tensor(ids, dtype=torch.long, device=embeddings.weight.device))  # (n, H)

    def version(self) -> tuple[int, ...]:
        """Changes whenever a base weight is changed in place (the frozen model, edited by its owner)."""
        return tuple(p._version for p in self._weights)

    @torch.no_grad()
    def capture(self, inputs: dict[str, torch.Tensor], module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The keys and values each attention layer computes for `inputs`: {stack: (L, 2, KVH, T, D)} of row 0.

        module: what to run (default the whole model; the backbone skips the LM head).
        """
        prompts = Prompts(capture=[])
        module = module or self.model
        was_training = module.training
        module.eval()
        try:
            module(**inputs, use_cache=False, **{KWARG: prompts})
        finally:
            module.train(was_training)
        seen = {id(module): (key[0], value[0]) for module, key, value in prompts.capture}
        return {
            stack: torch.stack([torch.stack(seen[id(m)]) for m in shape.modules])
            for stack, shape in self.stacks.items()
            if all(id(m) in seen for m in shape.modules)
        }

    @torch.no_grad()
    def prompt_kv(self, embeds: torch.Tensor) -> dict[int, torch.Tensor]:
        """Keys and values of leading soft tokens (n, H) at positions 0..n-1: {id(attention module): (2, KVH, n, D)}."""
        count = embeds.shape[0]
        embeds = embeds.to(self.model.get_input_embeddings().weight.dtype)  # prompts stay float32; the model may not
        inputs = {"inputs_embeds": embeds[None], "attention_mask": torch.ones(1, count, dtype=torch.long, device=embeds.device)}
        if self.family.position_offset is not None:
            inputs["position_ids"] = torch.arange(count, device=embeds.device)[None] + self.family.position_offset
        captured = self.capture(inputs, getattr(self.model, "base_model", self.model))
        return {id(m): kv for stack, layers in captured.items() for m, kv in zip(self.stacks[stack].modules, layers)}

    @torch.no_grad()
    def word_activations(self, text: str, num_tokens: int) -> dict[str, torch.Tensor]:
        """Keys and values real words produce in each layer: {stack: (L, 2, KVH, P, D)}, cycled to P tokens."""
        if self.loading:
            return {s: torch.zeros(v.num_layers, 2, v.kv_heads, num_tokens, v.head_dim) for s, v in self.stacks.items()}
        ids = torch.tensor([self.token_ids(text)], device=self.model.get_input_embeddings().weight.device)
        inputs = {"input_ids": ids}
        if self.layout == "encoder-decoder":
            inputs["decoder_input_ids"] = ids
        result = {}
        for stack, layers in self.capture(inputs).items():
            layers = layers.float().cpu()  # (L, 2, KVH, T, D)
            repeat = -(-num_tokens // layers.shape[3])
            result[stack] = layers.repeat(1, 1, 1, repeat, 1)[:, :, :, :num_tokens]
        return result


def declared_pooling(folder: str) -> str | None:
    """The pooling a sentence-transformers model folder declares (1_Pooling/config.json): first, mean or None."""
    path = Path(folder) / "1_Pooling" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "first"
    if config.get("pooling_mode_lasttoken"):
        return "last"
    return None


def render_plain(fields: dict[str, str], base: Base, max_length: int | None = None) -> list[int]:
    """Token ids of the input fields joined by spaces, as the tokenizer makes them (special tokens included).

    A row longer than `max_length` loses its end; a row of several fields (premise and hypothesis, question
    and passage) loses tokens from the end of its longest field first, so that every field keeps a part.
    """
    tokenizer = base._tokenizer("tokenizing text")
    ids = tokenizer(" ".join(fields.values()), truncation=max_length is not None, max_length=max_length)["input_ids"]
    if max_length is None or len(fields) == 1 or len(ids) < max_length:
        return ids
    pieces = [base.token_ids(text, leading_space=i > 0) for i, text in enumerate(fields.values())]
    begin, end = base.special_tokens()
    lengths = [len(piece) for piece in pieces]
    while sum(lengths) > max(max_length - len(begin) - len(end), len(lengths)):
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        lengths[longest] -= 1
    return begin + [t for piece, n in zip(pieces, lengths) for t in piece[:n]] + end


class Task(nn.Module):
    def __init__(
        self,
        config: TaskConfig,
        base: Base,
        input_prompt: InputPrompt | None = None,
        deep_prompt: DeepPrompt | None = None,
        render: Callable[[dict[str, str], Base, int | None], list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.input_prompt = input_prompt
        self.deep_prompt = deep_prompt
        self.render = render or render_plain
        self.head = None
        if config.head is not None:
            if base.layout == "encoder-decoder":
                raise UserError("a fresh head needs an encoder or a decoder-only model, not an encoder-decoder")
            self.head = Head(config.head, base.hidden_size, config.num_labels, config.head_dropout)
        if config.label_words is not None or (config.labels and config.head is None):
            self.register_buffer("label_word_ids", torch.tensor(base.label_word_ids(config), dtype=torch.long))
        else:
            self.label_word_ids = None

    @property
    def prompt(self) -> InputPrompt | DeepPrompt:
        return self.input_prompt if self.input_prompt is not None else self.deep_prompt

    def enter(self, base: Base, reuse: bool) -> Entered:
        return self.prompt.enter(base, reuse)
