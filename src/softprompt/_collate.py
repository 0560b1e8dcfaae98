"""Turning :class:`~softprompt.data.Example` lists into model batches, one collator per task kind.

classification: the text (or field dict) through ``PromptModel.tokenize`` (which renders P-Tuning
templates) and one class id per row, for a fresh head or for label words. token-classification:
pre-split words through the fast tokenizer (``is_split_into_words=True``), each word's tag on its
first sub-token and -100 elsewhere (``data.align_word_labels``). generation: for a causal LM the
row is ``source + separator + target + eos`` with labels only on the target, left padded; for a
sequence-to-sequence model the source is the input and the target ids are the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .data import IGNORE_INDEX, Example, align_word_labels
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

    # -- training batches ---------------------------------------------------------------------
    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """A training (or dev-loss) batch: inputs plus ``labels``."""
        if self.kind == "classification":
            batch = self.pm.tokenize([ex.text for ex in examples], max_length=self.max_length)
            index = {label: i for i, label in enumerate(self.labels)}
            # Unlabelled rows (prediction) get class 0, which nothing reads.
            batch["labels"] = torch.tensor([index.get(str(ex.label), 0) for ex in examples])  # (B,)
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
