"""Turning :class:`~softprompt.data.Example` lists into model batches, one collator per task kind.

classification: the text (or field dict) through ``PromptModel.tokenize`` (which renders P-Tuning
templates) and one class id per row, for a fresh head or for label words. token-classification:
pre-split words through the fast tokenizer (``is_split_into_words=True``), each word's tag on its
first sub-token and -100 elsewhere (``data.align_word_labels``). generation: for a causal LM the
row is ``source + separator + target + eos`` with labels only on the target, left padded; for a
sequence-to-sequence model the source is the input and the target ids are the labels. The longest
input is capped so that input and prompt fit the model's position table, and inputs longer than
that are cut, each kind keeping the part its task needs; :meth:`Collator.truncation_notice` counts
them once for the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from transformers.utils import logging as hf_logging

from .data import IGNORE_INDEX, Example, align_word_labels
from .errors import UserError
from .model import PromptModel, pad_rows

TaskKind = Literal["classification", "token-classification", "generation"]


@dataclass
class Collator:
    """Builds the batches of one task on one PromptModel."""

    pm: PromptModel
    kind: TaskKind
    labels: list[str]
    max_length: int = 256
    separator: str = " => "

    @property
    def tokenizer(self):
        return self.pm.tokenizer

    @property
    def seq2seq(self) -> bool:
        return bool(getattr(self.pm.base_model.config, "is_encoder_decoder", False))

    @property
    def left(self) -> bool:
        return getattr(self.tokenizer, "padding_side", "right") == "left"

    def pad_id(self) -> int:
        return self.pm._pad_id()

    # -- lengths --------------------------------------------------------------------------------
    def position_limit(self) -> int | None:
        """The longest input whose positions, after the prompt's, still fit the model's position table."""
        config = self.pm.base_model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if not isinstance(positions, int):
            return None
        base, task = self.pm._base, self.pm.tasks["default"]
        used = base.family.position_offset or 0
        if task.deep_prompt is not None and base.family.position_offset is not None:
            used += task.deep_prompt.num_tokens  # real tokens are numbered after the prefix
        if task.input_prompt is not None and task.input_prompt.placement != "slots":
            used += task.config.num_virtual_tokens or 0  # soft tokens join the sequence (template slots are in the ids)
        return positions - used

    def fit_positions(self) -> str | None:
        """Lower ``max_length`` to :meth:`position_limit`; the notice says so."""
        limit = self.position_limit()
        if limit is None or self.max_length <= limit:
            return None
        if limit < 2:
            raise UserError(f"the prompt takes all {limit + (self.max_length - limit)} positions of the model; "
                            "use fewer --num-virtual-tokens")
        before, self.max_length = self.max_length, limit
        return (f"--max-length {before} does not fit the model's positions with the prompt; inputs are capped at "
                f"{limit} tokens")

    def _full_length(self, examples: list[Example]) -> list[int]:
        """Each example's input length before any cut."""
        huge = 1 << 30
        quiet = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "longer than the specified maximum": that is what is counted here
        try:
            if self.kind == "classification":
                return self.pm.tokenize([ex.text for ex in examples], max_length=huge)["attention_mask"].sum(-1).tolist()
            if self.kind == "token-classification":
                words = [ex.tokens or str(ex.text).split() for ex in examples]
                return [len(ids) for ids in self.tokenizer(words, is_split_into_words=True)["input_ids"]]
            sources = [ex.text if isinstance(ex.text, str) else " ".join(ex.text.values()) for ex in examples]
            suffix = "" if self.seq2seq else self.separator
            return [len(ids) for ids in self.tokenizer([s + suffix for s in sources])["input_ids"]]
        finally:
            hf_logging.set_verbosity(quiet)

    def truncation_notice(self, examples: list[Example], what: str) -> str | None:
        """How many of `examples` are cut to fit, and which part of them is kept; None when none is."""
        limit = self.max_length if self.kind != "generation" or self.seq2seq else self.max_length // 2
        cut = sum(sum(n > limit for n in self._full_length(examples[i : i + 512])) for i in range(0, len(examples), 512))
        if not cut:
            return None
        template = getattr(self.pm.tasks["default"].config, "template", None)
        several = any(isinstance(ex.text, dict) and len(ex.text) > 1 for ex in examples)
        kept = {"classification": "the template's prompt, anchors and [MASK], the longest field shortened" if template
                else "a part of every field, the longest shortened first" if several else "their start",
                "token-classification": "their first words (the rest are tagged O)",
                "generation": "the end of the source" if not self.seq2seq else "the start of the source"}[self.kind]
        return (f"{cut} of {len(examples)} {what} rows are longer than {limit} tokens (--max-length) and are cut to fit, "
                f"keeping {kept}")

    # -- training batches ---------------------------------------------------------------------
    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """A training (or dev-loss) batch: inputs plus ``labels``."""
        if self.kind == "classification":
            batch = self.pm.tokenize([ex.text for ex in examples], max_length=self.max_length)
            index = {label: i for i, label in enumerate(self.labels)}
            unknown = sorted({str(ex.label) for ex in examples if ex.label is not None and str(ex.label) not in index})
            if unknown:
                raise UserError(f"labels {unknown} are not among the prompt's labels {self.labels}")
            # Unlabelled rows (prediction) get class 0, which nothing reads.
            batch["labels"] = torch.tensor([index[str(ex.label)] if ex.label is not None else 0 for ex in examples])  # (B,)
            return batch
        if self.kind == "token-classification":
            return self._tokens(examples, with_labels=True)[0]
        return self._generation(examples)

    def _tokens(self, examples: list[Example], with_labels: bool) -> tuple[dict[str, torch.Tensor], list]:
        words = [ex.tokens or str(ex.text).split() for ex in examples]
        encoded = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
        rows = encoded["input_ids"]
        batch = pad_rows(rows, self.pad_id(), self.left)
        index = {tag: i for i, tag in enumerate(self.labels)}
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # (B, T)
        for row, ex in enumerate(examples):
            tags = [index[t] for t in ex.tags] if with_labels and ex.tags else [0] * len(words[row])
            aligned = align_word_labels(encoded.word_ids(row), tags)
            start = labels.shape[1] - len(aligned) if self.left else 0
            labels[row, start : start + len(aligned)] = torch.tensor(aligned)
        batch["labels"] = labels
        return batch, [encoded.word_ids(row) for row in range(len(rows))]

    def _source_ids(self, example: Example) -> list[int]:
        text = example.text if isinstance(example.text, str) else " ".join(example.text.values())
        if self.seq2seq:
            return self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        ids = self.tokenizer(text + self.separator, add_special_tokens=False)["input_ids"]
        return ids[-self.max_length // 2 :]  # keep the separator; leave room for the target

    def _generation(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        eos = self.tokenizer.eos_token_id
        if self.seq2seq:
            batch = pad_rows([self._source_ids(ex) for ex in examples], self.pad_id(), left=False)
            targets = [self.tokenizer(ex.target or "", truncation=True, max_length=self.max_length)["input_ids"] for ex in examples]
            padded = pad_rows(targets, self.pad_id(), left=False)
            batch["labels"] = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, IGNORE_INDEX)
            return batch
        rows, label_rows = [], []
        for ex in examples:
            source = self._source_ids(ex)
            target = self.tokenizer(" " + (ex.target or ""), add_special_tokens=False)["input_ids"]
            target = (target + ([eos] if eos is not None else []))[: self.max_length - len(source)]
            rows.append(source + target)
            label_rows.append([IGNORE_INDEX] * len(source) + target)
        batch = pad_rows(rows, self.pad_id(), left=True)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # (B, T)
        for row, target in enumerate(label_rows):
            labels[row, labels.shape[1] - len(target) :] = torch.tensor(target)
        batch["labels"] = labels
        return batch

    # -- prediction ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, examples: list[Example], max_new_tokens: int = 64) -> list:
        """Predicted labels, tag lists or generated strings for a batch of examples."""
        device = next(self.pm.base_model.parameters()).device
        if self.kind == "generation":
            batch = pad_rows([self._source_ids(ex) for ex in examples], self.pad_id(), left=not self.seq2seq)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = self.pm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=self.pad_id())
            new = out if self.seq2seq else out[:, batch["input_ids"].shape[1] :]
            return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        if self.kind == "classification":
            batch, word_ids = self(examples), []
        else:
            batch, word_ids = self._tokens(examples, with_labels=False)
        batch.pop("labels")
        out = self.pm(**{k: v.to(device) for k, v in batch.items()})
        if self.kind == "classification":
            logits = out["label_logits"] if out.get("label_logits") is not None else out["logits"]  # (B, C)
            return [self.labels[i] for i in logits.argmax(-1).tolist()]
        best = out["logits"].argmax(-1).tolist()  # (B, T)
        return [word_tags(best[row], word_ids[row], len(ex.tokens or str(ex.text).split()), self.labels, self.left)
                for row, ex in enumerate(examples)]

    def golds(self, examples: list[Example]) -> list:
        if self.kind == "classification":
            return [str(ex.label) for ex in examples]
        if self.kind == "token-classification":
            return [list(ex.tags or []) for ex in examples]
        return [ex.references or [ex.target or ""] for ex in examples]


def word_tags(best: list[int], word_ids: list[int | None], words: int, labels: list[str], left: bool) -> list[str]:
    """Each word's tag: the class predicted at its first sub-token (the one that carried its label).

    ``best`` holds one class id per position of a padded row, ``word_ids`` the tokenizer's word index
    per real sub-token. Words cut off by truncation stay "O", outside any entity.
    """
    tags = ["O"] * words
    offset = len(best) - len(word_ids) if left else 0
    seen: set[int] = set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            tags[word] = labels[best[offset + position]]
    return tags
