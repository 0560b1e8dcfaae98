"""Tiny offline models and data files for the CLI and trainer tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
from transformers import BertConfig, BertModel, BertTokenizerFast, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "movie", "was", "film", "is", "very",
         "john", "paris", "acme", "lives", "in", "works", "at", "name", "food", "area", "city", "a", "place"]


def bert(folder: Path) -> Path:
    """A 2-layer BERT encoder (hidden 32) with a WordPiece tokenizer that knows every word of WORDS."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # The vocabulary itself, not vocab_file=: transformers 5 builds a 5-token vocabulary from that keyword.
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    assert tokenizer.convert_tokens_to_ids(WORDS[0]) == 5, "the tiny tokenizer must know its words"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def gpt2(folder: Path) -> Path:
    """A 2-layer GPT-2 (hidden 32) with a word-level tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, "=>": 3, "|": 4, ":": 5, **{w: i + 6 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=1, bos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def sentiment(path: Path, n: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        word = rng.choice(["good", "great", "fine"] if label == "pos" else ["bad", "awful", "poor"])
        rows.append({"text": f"the movie was very {word}", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conll(path: Path, n: int = 24) -> Path:
    sentences = ["john lives in paris\tB-PER O O B-LOC", "john works at acme\tB-PER O O B-ORG",
                 "the film is good\tO O O O"]
    lines = []
    for i in range(n):
        words, tags = sentences[i % 3].split("\t")
        lines += [f"{w} {t}" for w, t in zip(words.split(), tags.split())] + [""]
    path.write_text("\n".join(lines))
    return path


def e2e(path: Path, n: int = 16) -> Path:
    lines = [f"name : acme | food : {w}||acme is a {w} place" for w in ["good", "bad", "fine", "great"] * (n // 4)]
    path.write_text("\n".join(lines) + "\n")
    return path
