"""Tiny models of every supported family, built from configs in code, and the prompt configs of each method."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers as T

import softprompt
from softprompt._families import FAMILIES as FAMILY_TABLE

VOCAB = 96
PAD, BOS, EOS, MASK = 0, 1, 2, 3

_COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
_DECODER = dict(
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
    intermediate_size=64, max_position_embeddings=128, **_COMMON,
)
_ENCODER = dict(
    num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128, **_COMMON,
)

# One tiny config per model_type of the family table; the test matrix is generated from the table.
CONFIGS = {
    "gpt2": lambda: T.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_COMMON
    ),
    "llama": lambda: T.LlamaConfig(**_DECODER),
    "qwen2": lambda: T.Qwen2Config(**_DECODER),
    "qwen3": lambda: T.Qwen3Config(head_dim=8, **_DECODER),
    "mistral": lambda: T.MistralConfig(sliding_window=5, **_DECODER),
    "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=8, sliding_window=5, **_DECODER),
    "bert": lambda: T.BertConfig(**_ENCODER),
    "roberta": lambda: T.RobertaConfig(**{**_ENCODER, "max_position_embeddings": 130}),
    "deberta-v2": lambda: T.DebertaV2Config(**_ENCODER),
    "t5": lambda: T.T5Config(
        num_layers=2, num_heads=4, d_model=32, d_kv=8, d_ff=64, dropout_rate=0.0, decoder_start_token_id=PAD, **_COMMON
    ),
    "bart": lambda: T.BartConfig(
        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, d_model=32,
        encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0, max_position_embeddings=128,
        decoder_start_token_id=EOS, forced_eos_token_id=None, **_COMMON,
    ),
}
FAMILIES = list(FAMILY_TABLE)
DECODERS = [f for f in FAMILIES if FAMILY_TABLE[f].layout == "decoder"]
ENCODERS = [f for f in FAMILIES if FAMILY_TABLE[f].layout == "encoder"]
SEQ2SEQ = [f for f in FAMILIES if FAMILY_TABLE[f].layout == "encoder-decoder"]

LM_CLASS = {**{f: T.AutoModelForCausalLM for f in DECODERS}, **{f: T.AutoModelForMaskedLM for f in ENCODERS},
            **{f: T.AutoModelForSeq2SeqLM for f in SEQ2SEQ}}


def layout(family: str) -> str:
    return FAMILY_TABLE[family].layout


def build(family: str, auto=None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    model = (auto or LM_CLASS[family]).from_config(config).eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = None  # random weights: never stop early
        model.generation_config.forced_eos_token_id = None
        model.generation_config.pad_token_id = PAD
    return model


# p-tuning: a template of slots around the input (rendered by hand in make_rows); p-tuning-plain: no
# template, soft tokens before plain input_ids.
METHODS = ["prompt-tuning", "p-tuning", "p-tuning-plain", "prefix-tuning", "p-tuning-v2"]
PREFIX_METHODS = {"prefix-tuning", "p-tuning-v2"}


def method_config(method: str, tokens: int = 3, **overrides) -> softprompt.TaskConfig:
    """A config of `method` with P soft tokens and no dropout, so outputs are deterministic."""
    if method == "prompt-tuning":
        return softprompt.PromptTuningConfig(num_virtual_tokens=tokens, **overrides)
    if method == "p-tuning":
        first = tokens // 2
        return softprompt.PTuningConfig(
            template=f"[P:{first}] {{text}} [P:{tokens - first}]", encoder="lstm", encoder_hidden_size=16, **overrides
        )
    if method == "p-tuning-plain":
        return softprompt.PTuningConfig(num_virtual_tokens=tokens, encoder="lstm", encoder_hidden_size=16, **overrides)
    if method == "prefix-tuning":
        return softprompt.PrefixTuningConfig(num_virtual_tokens=tokens, projection_hidden_size=16, **overrides)
    return softprompt.PTuningV2Config(num_virtual_tokens=tokens, prefix_dropout=0.0, **overrides)


def cell(family: str, method: str):
    """A pytest param for one (family x method) cell; unsupported cells are strict xfails with the reason."""
    marks = []
    if FAMILY_TABLE[family].prefix_unsupported and method in PREFIX_METHODS:
        marks.append(pytest.mark.xfail(raises=ValueError, strict=True, reason=FAMILY_TABLE[family].prefix_unsupported))
    return pytest.param(family, method, marks=marks, id=f"{family}-{method}")


ALL_CELLS = [cell(f, m) for f in FAMILIES for m in METHODS]
GENERATE_CELLS = [cell(f, m) for f in DECODERS + SEQ2SEQ for m in METHODS]


def make_rows(family: str, method: str, lengths: list[int], seed: int = 1, tokens: int = 3) -> list[list[int]]:
    """Random token rows; for P-Tuning, rendered into the template `[P:a] {text} [P:b]` by hand."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        if family in ENCODERS:
            ids = [BOS] + ids[1:]  # stands for [CLS]
        if method == "p-tuning":
            first = tokens // 2
            ids = [-(i + 1) for i in range(first)] + ids + [-(first + i + 1) for i in range(tokens - first)]
        rows.append(ids)
    return rows


def pad(rows: list[list[int]], left: bool) -> dict[str, torch.Tensor]:
    from softprompt.model import pad_rows

    return pad_rows(rows, PAD, left=left)


def extra_inputs(family: str, batch: dict[str, torch.Tensor], seed: int = 2) -> dict[str, torch.Tensor]:
    """Encoder-decoder models need decoder inputs for a forward."""
    if layout(family) != "encoder-decoder":
        return batch
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randint(4, VOCAB, (batch["input_ids"].shape[0], 4), generator=generator)
    return {**batch, "decoder_input_ids": decoder}
