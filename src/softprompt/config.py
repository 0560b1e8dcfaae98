"""Configurations of the four prompt methods.

Each method is a dataclass whose defaults are the ones its paper reports (see the table in the
README). A config validates itself in ``__post_init__`` and raises a
:class:`~softprompt.errors.ConfigError` (a ``ValueError``) naming the offending value. The fields
shared by every method (the number of soft tokens, an optional fresh linear head, label words
scored by the language-model head) live in :class:`TaskConfig`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .errors import ConfigError

Head = Literal["sequence-classification", "token-classification"]

_SLOT = re.compile(r"\[P(?::(\d+))?\]")


@dataclass
class TaskConfig:
    """Fields every method shares."""

    method: ClassVar[str] = ""

    num_virtual_tokens: int | None = 20
    """Number of soft tokens (or prefix positions) P."""
    head: Head | None = None
    """A fresh linear head trained with the prompt: on the first/last token or on every token."""
    num_labels: int | None = None
    """Number of classes for `head` (defaults to len(labels) when labels are given)."""
    labels: list[str] | None = None
    """Class names, in the order of the head's outputs or of `label_words`."""
    label_words: dict[str, str] | list[str] | None = None
    """Verbalizer: one word per class, scored by the LM head at [MASK] (masked LM) or as the next token."""
    head_dropout: float = 0.1
    """Dropout before the fresh head."""
    pooling: Literal["auto", "first", "last", "mean"] = "auto"
    """What a sequence-classification head reads: the first real token ([CLS]), the last real token, or the
    mean over the real tokens; auto: the model's own pooling where it declares one (a sentence-transformers
    folder's 1_Pooling/config.json), else [CLS] for encoders and the last real token for decoders."""

    def __post_init__(self) -> None:
        if self.pooling not in ("auto", "first", "last", "mean"):
            raise ConfigError(f"pooling={self.pooling!r}; use auto, first, last or mean")
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.head is not None and self.head not in ("sequence-classification", "token-classification"):
            raise ConfigError(
                f"head={self.head!r} is not a head; use 'sequence-classification' or 'token-classification'"
            )
        if isinstance(self.label_words, dict):
            if self.labels is None:
                self.labels = list(self.label_words)
            missing = [label for label in self.labels if label not in self.label_words]
            if missing:
                raise ConfigError(f"label_words has no word for labels {missing}")
            self.label_words = [self.label_words[label] for label in self.labels]
        if self.label_words is not None:
            if self.labels is not None and len(self.labels) != len(self.label_words):
                raise ConfigError(
                    f"{len(self.labels)} labels but {len(self.label_words)} label_words; give one word per label"
                )
            if self.head is not None:
                raise ConfigError("give either a fresh `head` or `label_words`, not both")
        if self.head is not None and self.num_labels is None:
            if self.labels is None:
                raise ConfigError(f"head={self.head!r} needs num_labels or labels")
            self.num_labels = len(self.labels)
        if self.num_labels is not None and self.num_labels < 1:
            raise ConfigError(f"num_labels must be >= 1, got {self.num_labels}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"head_dropout must be in [0, 1), got {self.head_dropout}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def exported(self) -> TaskConfig:
        """The same task with its reparameterization folded into a plain table."""
        return dataclasses.replace(self)


@dataclass
class PromptTuningConfig(TaskConfig):
    """Prompt Tuning (Lester et al. 2021): P trainable soft tokens in the input sequence."""

    method: ClassVar[str] = "prompt-tuning"

    init: Literal["random", "vocab", "text", "labels"] = "random"
    """random: uniform [-0.5, 0.5]; vocab: embeddings of frequent tokens; text: of `init_text`; labels: of label words."""
    init_text: str | None = None
    """Text whose token embeddings start the prompt (init='text')."""
    placement: Literal["prefix", "after_bos", "suffix"] = "prefix"
    """Where the soft tokens go: before the input, after its first token (BOS/[CLS]), or after it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in ("random", "vocab", "text", "labels"):
            raise ConfigError(f"init={self.init!r}; use random, vocab, text or labels")
        if self.init == "text" and not self.init_text:
            raise ConfigError("init='text' needs init_text, e.g. init_text='Classify the sentiment:'")
        if self.init == "labels" and not (self.label_words or self.labels):
            raise ConfigError("init='labels' needs label_words (or labels) to take the embeddings from")
        if self.placement not in ("prefix", "after_bos", "suffix"):
            raise ConfigError(f"placement={self.placement!r}; use prefix, after_bos or suffix")
        if self.num_virtual_tokens is None:
            raise ConfigError("num_virtual_tokens is required for prompt tuning")


PAPER_TEMPLATE = "[P:3] {text} [P:3] [MASK]"


@dataclass
class PTuningConfig(TaskConfig):
    """P-Tuning (Liu et al. 2021): soft tokens from a prompt encoder, placed by a template or before the input."""

    method: ClassVar[str] = "p-tuning"

    num_virtual_tokens: int | None = None
    """Number of soft tokens: with a template, derived from its [P:n] slots; without one, placed before the input."""
    encoder: Literal["lstm", "mlp", "none"] = "lstm"
    """Prompt encoder: embedding -> 2-layer bidirectional LSTM -> MLP (paper), embedding -> MLP, or a plain table."""
    encoder_hidden_size: int | None = None
    """Hidden width of the MLP (defaults to the model's hidden size, as in the paper)."""
    template: str | None = None
    """Soft slots [P:n], input fields {name}, anchor words, and [MASK] where the label word is scored. Left out
    with num_virtual_tokens given: the soft tokens go before the model's own input_ids (as PEFT's P-Tuning);
    both left out: the paper's template '[P:3] {text} [P:3] [MASK]'."""

    def __post_init__(self) -> None:
        if self.template is None and self.num_virtual_tokens is None:
            self.template = PAPER_TEMPLATE
        if self.template is not None:
            slots = self.template_slots()
            if slots == 0:
                raise ConfigError(f"template {self.template!r} has no soft slot; add one like [P:3]")
            if self.num_virtual_tokens is None:
                self.num_virtual_tokens = slots
            elif self.num_virtual_tokens != slots:
                raise ConfigError(
                    f"template {self.template!r} holds {slots} soft tokens but num_virtual_tokens="
                    f"{self.num_virtual_tokens}; leave num_virtual_tokens out or change the [P:n] slots"
                )
            if not re.search(r"\{\w+\}", self.template):
                raise ConfigError(f"template {self.template!r} has no input field; add {{text}}")
        if self.encoder not in ("lstm", "mlp", "none"):
            raise ConfigError(f"encoder={self.encoder!r}; use lstm, mlp or none")
        super().__post_init__()

    def template_slots(self) -> int:
        return sum(int(n or 1) for n in _SLOT.findall(self.template or ""))

    def leading_slots(self) -> int:
        """Soft slots at the very start of the template, before any field, anchor or [MASK]."""
        count = 0
        for piece in re.split(r"(\[P(?::\d+)?\])", (self.template or "").strip()):
            if match := _SLOT.fullmatch(piece):
                count += int(match.group(1) or 1)
            elif piece.strip():
                break
        return count

    def exported(self) -> PTuningConfig:
        return dataclasses.replace(self, encoder="none")


@dataclass
class PrefixTuningConfig(TaskConfig):
    """Prefix-Tuning (Li & Liang 2021): key/value prefixes in every attention layer."""

    method: ClassVar[str] = "prefix-tuning"

    num_virtual_tokens: int | None = 10
    projection_hidden_size: int | None = 512
    """Width of the Linear-Tanh-Linear reparameterization; None trains the key/value table directly."""
    init_text: str | None = None
    """Start the prefix from the keys and values of these real words (e.g. 'table-to-text:')."""
    prefix_dropout: float = 0.0
    """Dropout on the prefix keys and values while training."""
    stacks: list[str] | None = None
    """Attention stacks that get a prefix: encoder, decoder, cross (default: all the model has)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_virtual_tokens is None:
            raise ConfigError("num_virtual_tokens is required for prefix tuning")
        if self.projection_hidden_size is not None and self.projection_hidden_size < 1:
            raise ConfigError(f"projection_hidden_size must be >= 1 or None, got {self.projection_hidden_size}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ConfigError(f"prefix_dropout must be in [0, 1), got {self.prefix_dropout}")
        bad = [s for s in self.stacks or [] if s not in ("encoder", "decoder", "cross")]
        if bad:
            raise ConfigError(f"stacks {bad} unknown; use encoder, decoder, cross")

    def exported(self) -> PrefixTuningConfig:
        return dataclasses.replace(self, projection_hidden_size=None, init_text=None)


@dataclass
class PTuningV2Config(PrefixTuningConfig):
    """P-Tuning v2 (Liu et al. 2022): deep prompts in all (or a range of) layers, with linear heads."""

    method: ClassVar[str] = "p-tuning-v2"

    num_virtual_tokens: int | None = 16
    projection_hidden_size: int | None = None
    """Optional Linear-Tanh-Linear reparameterization (off by default, as in the paper)."""
    prefix_dropout: float = 0.1
    layers: tuple[int, int] | list[int] | None = None
    """Half-open range [start, end) of layers that get deep prompts (default: all layers)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            if len(self.layers) != 2 or not 0 <= self.layers[0] < self.layers[1]:
                raise ConfigError(f"layers must be a range [start, end) with 0 <= start < end, got {self.layers}")
            self.layers = [int(self.layers[0]), int(self.layers[1])]


CONFIGS: dict[str, type[TaskConfig]] = {
    cls.method: cls for cls in (PromptTuningConfig, PTuningConfig, PrefixTuningConfig, PTuningV2Config)
}


def config_from_dict(data: dict[str, Any]) -> TaskConfig:
    """Rebuild a config written by :meth:`TaskConfig.to_dict`."""
    data = dict(data)
    method = data.pop("method", None)
    if method not in CONFIGS:
        raise ConfigError(f"unknown method {method!r}; known: {sorted(CONFIGS)}")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{method} config has unknown fields {unknown}")
    return cls(**data)


__all__ = [
    "CONFIGS",
    "PTuningConfig",
    "PTuningV2Config",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "TaskConfig",
    "config_from_dict",
]
