"""PEFT prompt adapters both ways, against the installed PEFT 0.21.2.

Every cell of (family × method × direction) is a test: equal outputs (within 1e-5, PEFT's forward
without cache on unpadded rows), a documented difference in where PEFT puts the prompt (left
padding; encoder-decoder prefixes; sliding windows), or a refusal that names what PEFT cannot represent.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import build, pad
from safetensors.torch import load_file, save_file

import softprompt
from softprompt.checkpoint import CheckpointError

peft = pytest.importorskip("peft", reason="PEFT is a test-only reference (pip install peft==0.21.2)")

P = 3
ROWS = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
FAMILIES = ["gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma3_text", "t5", "bart", "bert", "roberta", "deberta-v2"]
SEQ2SEQ = {"t5", "bart"}
ENCODERS = {"bert", "roberta", "deberta-v2"}
TASK_TYPE = {f: "SEQ_2_SEQ_LM" if f in SEQ2SEQ else "FEATURE_EXTRACTION" if f in ENCODERS else "CAUSAL_LM"
             for f in FAMILIES}
# Prefixes are placed differently here: decoder self-attention only (encoder-decoders), or outside a
# sliding window of 5 (PEFT's prefix counts as past tokens); or refused (DeBERTa-v2). Each has its own test.
PREFIX_ELSEWHERE = SEQ2SEQ | {"mistral", "gemma3_text", "deberta-v2"}


def inputs(family: str, rows=ROWS, left: bool = False) -> dict[str, torch.Tensor]:
    batch = pad(rows, left=left)
    if family in SEQ2SEQ:
        batch["decoder_input_ids"] = torch.tensor([[2, 5, 6]] * len(rows))
    return batch


def outputs(model, batch, strip: int = 0) -> torch.Tensor:
    """Logits (or hidden states) without cache; `strip` drops PEFT's virtual positions in front."""
    with torch.no_grad():
        out = model(**batch, use_cache=False)
    values = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return values[:, strip:]


def virtual_positions(family: str, peft_type: str) -> int:
    """PEFT returns outputs for its virtual input tokens too, except for encoder-decoders' decoder."""
    return P if peft_type != "PREFIX_TUNING" and family not in SEQ2SEQ else 0


def peft_config(peft_type: str, family: str, projection: bool = True):
    """projection: PREFIX_TUNING's prefix_projection; for P_TUNING, False means PEFT's LSTM encoder."""
    task_type = TASK_TYPE.get(family, "SEQ_2_SEQ_LM" if family in SEQ2SEQ else "CAUSAL_LM")
    if peft_type == "PROMPT_TUNING":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=P)
    if peft_type == "P_TUNING":
        return peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=P, encoder_hidden_size=16,
                                        encoder_reparameterization_type="MLP" if projection else "LSTM")
    return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=P, prefix_projection=projection,
                                   encoder_hidden_size=16)


def saved_peft_adapter(family: str, config, folder, seed: int = 0):
    """A PEFT adapter with a non-trivial prompt, saved by PEFT, and PEFT's inference model loaded from it."""
    torch.manual_seed(seed)
    model = peft.get_peft_model(build(family), config)
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(folder)
    return peft.PeftModel.from_pretrained(build(family), folder).eval()


def perturbed(pm: softprompt.PromptModel, seed: int = 0) -> softprompt.PromptModel:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in pm.trainable_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return pm.eval()


IMPORTS = [("PROMPT_TUNING", True), ("P_TUNING", True), ("P_TUNING", False), ("PREFIX_TUNING", True),
           ("PREFIX_TUNING", False)]


def import_cell(family: str, peft_type: str, projection: bool):
    variant = {"P_TUNING": "-lstm", "PREFIX_TUNING": "-no-projection"}.get(peft_type, "")
    name = peft_type.lower() + ("" if projection else variant)
    return pytest.param(family, peft_type, projection, id=f"{family}-{name}")


# -- PEFT -> softprompt --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family,peft_type,projection",
    [import_cell(f, t, p) for f in FAMILIES for t, p in IMPORTS if not (f in PREFIX_ELSEWHERE and t == "PREFIX_TUNING")],
)
def test_peft_adapter_loads_with_equal_outputs(family, peft_type, projection, tmp_path):
    reference = saved_peft_adapter(family, peft_config(peft_type, family, projection), tmp_path / "adapter")
    pm = softprompt.load(build(family), tmp_path / "adapter").eval()
    batch = inputs(family)
    expected = outputs(reference, batch, strip=virtual_positions(family, peft_type))
    torch.testing.assert_close(outputs(pm, batch), expected, atol=1e-5, rtol=1e-5)
    with pm.disabled():
        assert not torch.allclose(outputs(pm, batch), expected, atol=1e-3)  # the prompt does something
    config = pm.tasks["default"].config
    assert config.method == {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning"}.get(peft_type, "prefix-tuning")
    # Only the first P rows of a table saved for two submodules (T5) ever enter the model.
    table = load_file(tmp_path / "adapter" / "adapter_model.safetensors")["prompt_embeddings"]
    assert pm.num_trainable_parameters() == table[:P].numel()
    # And back: the same table in a folder PEFT loads.
    pm.export(tmp_path / "again", format="peft")
    original = load_file(tmp_path / "adapter" / "adapter_model.safetensors")["prompt_embeddings"]
    again = load_file(tmp_path / "again" / "adapter_model.safetensors")["prompt_embeddings"]
    torch.testing.assert_close(again, original[: again.shape[0]], atol=0, rtol=0)
    torch.testing.assert_close(
        outputs(peft.PeftModel.from_pretrained(build(family), tmp_path / "again").eval(), batch,
                strip=virtual_positions(family, peft_type)),
        expected, atol=1e-5, rtol=1e-5,
    )


def peft_decoder_prefixes(reference) -> torch.Tensor:
    """(L, 2, KVH, P, D): what PEFT's own get_prompt puts in each decoder self-attention layer's cache."""
    cache = reference.get_prompt(batch_size=1).self_attention_cache
    return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])


def encoder_decoder(family: str, layers: int = 2):
    return build(family, **({"num_layers": layers, "num_decoder_layers": layers} if family == "t5"
                            else {"encoder_layers": layers, "decoder_layers": layers}))


@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_prefix_keeps_softprompt_placement(family, layers, tmp_path):
    """PEFT's encoder-decoder prefix enters the decoder self-attention only, and softprompt keeps it there,
    each decoder layer with the keys and values PEFT gives it (table layer 2i mod L).

    softprompt then runs it its own way: on T5 the prefix keys get no relative position bias and on
    BART the decoder's real tokens are numbered from 0, where PEFT treats the prefix as P past tokens.
    """
    torch.manual_seed(0)
    model = peft.get_peft_model(encoder_decoder(family, layers), peft_config("PREFIX_TUNING", family, projection=False))
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_()
    model.save_pretrained(tmp_path / "a")
    reference = peft.PeftModel.from_pretrained(encoder_decoder(family, layers), tmp_path / "a").eval()
    pm = softprompt.load(encoder_decoder(family, layers), tmp_path / "a").eval()
    assert pm.tasks["default"].config.stacks == ["decoder"]
    with torch.no_grad():
        ours = pm.tasks["default"].deep_prompt()["decoder"]  # (L, 2, KVH, P, D)
    torch.testing.assert_close(ours, peft_decoder_prefixes(reference), atol=0, rtol=0)
    batch = inputs(family)
    table = load_file(tmp_path / "a" / "adapter_model.safetensors")["prompt_embeddings"]
    native = softprompt.attach(encoder_decoder(family, layers), softprompt.PrefixTuningConfig(
        num_virtual_tokens=P, projection_hidden_size=None, stacks=["decoder"])).eval()
    with torch.no_grad():
        read = table.view(P, layers, -1)[:, [(2 * i) % layers for i in range(layers)]].reshape(P, -1)
        native.tasks["default"].deep_prompt.encoders["decoder"].weight.copy_(read)
        got = pm(**batch, use_cache=False)
        base = encoder_decoder(family, layers)(**batch, use_cache=False)
    torch.testing.assert_close(got.logits, outputs(native, batch), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.encoder_last_hidden_state, base.encoder_last_hidden_state, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got.logits, base.logits, atol=1e-3)
    # The documented difference: PEFT's positions for the prefix (README, "PEFT adapters").
    assert not torch.allclose(got.logits, outputs(reference, batch), atol=1e-3)
    # And back: PEFT runs the exported folder as it ran its own.
    pm.export(tmp_path / "again", format="peft")
    again = peft.PeftModel.from_pretrained(encoder_decoder(family, layers), tmp_path / "again").eval()
    torch.testing.assert_close(outputs(again, batch), outputs(reference, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("peft_type", ["PROMPT_TUNING", "PREFIX_TUNING"])
def test_left_padding_keeps_softprompt_placement(family, peft_type, tmp_path):
    """PEFT puts soft tokens before the left padding (and numbers positions past it); softprompt puts
    them next to each row's real tokens, so a padded row equals the row alone (README, "PEFT adapters")."""
    reference = saved_peft_adapter(family, peft_config(peft_type, family), tmp_path / "a")
    pm = softprompt.load(build(family), tmp_path / "a").eval()
    rows = [ROWS[0], ROWS[1][:2]]
    padded = inputs(family, rows, left=True)
    short = inputs(family, [rows[1]])
    alone = outputs(reference, short, strip=virtual_positions(family, peft_type))  # (1, 2, V)
    ours = outputs(pm, padded)[1:, -2:]
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=1e-5)
    theirs = outputs(reference, padded, strip=virtual_positions(family, peft_type))[1:, -2:]
    assert not torch.allclose(theirs, alone, atol=1e-3)


@pytest.mark.parametrize("family", ["mistral", "gemma3_text"])
def test_sliding_window_keeps_softprompt_prefix_visible(family, tmp_path):
    """PEFT's prefix is P past tokens at positions 0..P-1, so a sliding window (5 here) hides it from later
    queries; softprompt's prefix is seen by every query (README, "PEFT adapters"). Inside the window the
    two agree."""
    reference = saved_peft_adapter(family, peft_config("PREFIX_TUNING", family), tmp_path / "a")
    pm = softprompt.load(build(family), tmp_path / "a").eval()
    short, long = inputs(family, [row[:2] for row in ROWS]), inputs(family, [row + row for row in ROWS])
    torch.testing.assert_close(outputs(pm, short), outputs(reference, short), atol=1e-5, rtol=1e-5)
    ours, theirs = outputs(pm, long), outputs(reference, long)
    window = build(family).config.sliding_window
    inside = window - P  # queries whose window still holds every prefix position
    torch.testing.assert_close(ours[:, :inside], theirs[:, :inside], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, -1], theirs[:, -1], atol=1e-3)
    pm.export(tmp_path / "again", format="peft")  # and back: PEFT runs it as it ran its own
    again = peft.PeftModel.from_pretrained(build(family), tmp_path / "again").eval()
    torch.testing.assert_close(outputs(again, long), theirs, atol=1e-5, rtol=1e-5)


def test_deberta_prefix_adapter_is_refused_with_the_reason(tmp_path):
    """DeBERTa-v2's attention bypasses transformers' attention interface (PEFT's own prefix forward fails there too)."""
    peft.get_peft_model(build("deberta-v2"), peft_config("PREFIX_TUNING", "deberta-v2")).save_pretrained(tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"PREFIX_TUNING adapter.*disentangled attention"):
        softprompt.load(build("deberta-v2"), tmp_path / "a")


# -- softprompt -> PEFT --------------------------------------------------------------------------
def export_config(method: str, family: str):
    stacks = ["decoder"] if family in SEQ2SEQ else None
    if method == "prompt-tuning":
        return softprompt.PromptTuningConfig(num_virtual_tokens=P)
    if method == "p-tuning":
        return softprompt.PTuningConfig(num_virtual_tokens=P, encoder="mlp", encoder_hidden_size=16)
    if method == "prefix-tuning":
        return softprompt.PrefixTuningConfig(num_virtual_tokens=P, projection_hidden_size=16, stacks=stacks)
    return softprompt.PTuningV2Config(num_virtual_tokens=P, prefix_dropout=0.0, stacks=stacks)


def export_cell(family: str, method: str):
    return pytest.param(family, method, id=f"{family}-{method}")


EXPORTS = ["prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"]


@pytest.mark.parametrize(
    "family,method",
    [export_cell(f, m) for f in FAMILIES for m in EXPORTS if not (f in PREFIX_ELSEWHERE and m in ("prefix-tuning", "p-tuning-v2"))],
)
def test_export_loads_in_peft_with_equal_outputs(family, method, tmp_path):
    pm = perturbed(softprompt.attach(build(family), export_config(method, family)))
    pm.export(tmp_path / "adapter", format="peft")
    reference = peft.PeftModel.from_pretrained(build(family), tmp_path / "adapter").eval()
    batch = inputs(family)
    peft_type = {"prompt-tuning": "PROMPT_TUNING", "p-tuning": "P_TUNING"}.get(method, "PREFIX_TUNING")
    assert reference.peft_config["default"].peft_type == peft_type
    expected = outputs(pm, batch)
    torch.testing.assert_close(outputs(reference, batch, strip=virtual_positions(family, peft_type)), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs(softprompt.load(build(family), tmp_path / "adapter").eval(), batch), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("auto", [T.AutoModelForSequenceClassification, T.AutoModelForTokenClassification],
                         ids=["sequence-classification", "token-classification"])
@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning-v2"])
def test_export_from_a_classifier_model_runs_it_unchanged_in_peft(auto, method, tmp_path):
    """PEFT's SEQ_CLS and TOKEN_CLS adapters must carry a trained classifier; the model's own frozen one is
    used through FEATURE_EXTRACTION instead, which calls the model as softprompt does."""
    pm = perturbed(softprompt.attach(build("bert", auto, num_labels=2), export_config(method, "bert")))
    pm.export(tmp_path / "adapter", format="peft")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] == "FEATURE_EXTRACTION"
    reference = peft.PeftModel.from_pretrained(build("bert", auto, num_labels=2), tmp_path / "adapter").eval()
    batch = pad([[1, *row] for row in ROWS], left=False)
    strip = P if method == "prompt-tuning" and auto is T.AutoModelForTokenClassification else 0
    torch.testing.assert_close(outputs(reference, batch, strip=strip), outputs(pm, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prefix-tuning", "p-tuning-v2"])
def test_export_of_a_decoder_prefix_on_t5_loads_in_peft(method, tmp_path):
    """With an odd number of layers every T5 decoder layer reads its own layer of PEFT's table: PEFT gets
    softprompt's prefix in every decoder layer, and runs it with relative position bias on the prefix keys
    (README, "PEFT adapters"): the same keys and values, other outputs."""
    pm = perturbed(softprompt.attach(encoder_decoder("t5", 3), export_config(method, "t5")))
    pm.export(tmp_path / "adapter", format="peft")
    reference = peft.PeftModel.from_pretrained(encoder_decoder("t5", 3), tmp_path / "adapter").eval()
    with torch.no_grad():
        ours = pm.tasks["default"].deep_prompt()["decoder"]
    torch.testing.assert_close(peft_decoder_prefixes(reference), ours, atol=0, rtol=0)
    batch = inputs("t5")
    assert not torch.allclose(outputs(reference, batch), outputs(pm, batch), atol=1e-3)
    torch.testing.assert_close(outputs(softprompt.load(encoder_decoder("t5", 3), tmp_path / "adapter").eval(), batch),
                               outputs(pm, batch), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_export_refuses_decoder_layers_that_peft_would_merge(family, tmp_path):
    """With two layers PEFT gives both decoder layers its table's first layer: distinct prefixes cannot go there."""
    pm = perturbed(softprompt.attach(build(family), export_config("prefix-tuning", family)))
    with pytest.raises(CheckpointError, match=r"gives decoder layers 0 and 1 of 2 one prefix.*2i mod 2"):
        pm.export(tmp_path / "adapter", format="peft")
    assert not (tmp_path / "adapter").exists()


def test_exported_config_has_the_fields_peft_writes(tmp_path):
    """The adapter_config.json softprompt writes holds the same fields as PEFT's own save."""
    for method, peft_type in [("prompt-tuning", "PROMPT_TUNING"), ("prefix-tuning", "PREFIX_TUNING")]:
        pm = softprompt.attach(build("llama"), export_config(method, "llama"))
        pm.export(tmp_path / method, format="peft")
        ours = json.loads((tmp_path / method / "adapter_config.json").read_text())
        saved_peft_adapter("llama", peft_config(peft_type, "llama", projection=False), tmp_path / f"peft-{method}")
        theirs = json.loads((tmp_path / f"peft-{method}" / "adapter_config.json").read_text())
        assert set(ours) == set(theirs) - {"peft_version"}
        shared = ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads",
                  "num_transformer_submodules", "inference_mode")
        assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
        assert set(load_file(tmp_path / method / "adapter_model.safetensors")) == {"prompt_embeddings"}


def test_peft_export_names_the_base_model_and_carries_a_card(tmp_path):
    model = build("gpt2")
    model.name_or_path = "org/tiny-gpt2"
    softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=P)).export(tmp_path / "a", format="peft")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-gpt2"
    card = (tmp_path / "a" / "README.md").read_text()
    assert "base_model: org/tiny-gpt2" in card and "PeftModel.from_pretrained" in card


# -- what PEFT cannot represent ------------------------------------------------------------------
REFUSALS = {
    "several tasks": ("gpt2", None, "holds one prompt"),
    "template": ("gpt2", softprompt.PTuningConfig(template="[P:2] {text} It was [P:1]"), "P_TUNING puts every soft token"),
    "label words": ("gpt2", softprompt.PromptTuningConfig(num_virtual_tokens=P, label_words={"neg": "bad", "pos": "good"}),
                    "no verbalizer"),
    "suffix": ("gpt2", softprompt.PromptTuningConfig(num_virtual_tokens=P, placement="suffix"), "before the input only"),
    "bert head": ("bert", softprompt.PTuningV2Config(num_virtual_tokens=P, head="sequence-classification", num_labels=2),
                  "fresh sequence-classification head"),
    "layer range": ("llama", softprompt.PTuningV2Config(num_virtual_tokens=P, layers=[1, 2]), "every layer"),
    "t5 encoder and cross prefixes": ("t5", softprompt.PrefixTuningConfig(num_virtual_tokens=P),
                                      "only the decoder self-attention"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_export_refuses_what_peft_cannot_represent(case, tmp_path):
    family, config, message = REFUSALS[case]
    tokenizer = _word_tokenizer(tmp_path) if case == "label words" else None
    if case == "several tasks":
        pm = softprompt.attach(build(family), softprompt.PromptTuningConfig(num_virtual_tokens=P))
        pm.add_task("other", softprompt.PromptTuningConfig(num_virtual_tokens=P))
    else:
        pm = softprompt.attach(build(family), config, tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match=message):
        pm.export(tmp_path / "adapter", format="peft")
    assert not (tmp_path / "adapter").exists()


def _word_tokenizer(tmp_path):
    from _tiny import gpt2

    return T.AutoTokenizer.from_pretrained(gpt2(tmp_path / "tok"))


def test_unknown_format_is_refused(tmp_path):
    pm = softprompt.attach(build("gpt2"), softprompt.PromptTuningConfig(num_virtual_tokens=P))
    with pytest.raises(ValueError, match="use 'softprompt' or 'peft'"):
        pm.export(tmp_path / "x", format="onnx")


# -- adapters softprompt refuses to load ---------------------------------------------------------
def test_adapter_for_another_width_is_refused_with_its_base_model_name(tmp_path):
    saved_peft_adapter("gpt2", peft_config("PROMPT_TUNING", "gpt2"), tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/tiny-gpt2"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"org/tiny-gpt2.*width 32.*hidden size 64"):
        softprompt.load(build("gpt2", n_embd=64), tmp_path / "a")


def test_prefix_for_another_layout_is_refused(tmp_path):
    saved_peft_adapter("gpt2", peft_config("PREFIX_TUNING", "gpt2"), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"2 layers of 4 key/value heads.*3 layers of 4"):
        softprompt.load(build("gpt2", n_layer=3), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"4 key/value heads \(width 32\).*2 key/value heads \(width 16\)"):
        softprompt.load(build("llama", hidden_size=64, num_attention_heads=8, num_key_value_heads=2), tmp_path / "a")


def test_encoder_decoder_adapter_on_a_decoder_is_refused(tmp_path):
    saved_peft_adapter("t5", peft_config("PROMPT_TUNING", "t5"), tmp_path / "a")
    with pytest.raises(CheckpointError, match="encoder-decoder"):
        softprompt.load(build("gpt2"), tmp_path / "a")


def test_adapter_with_trained_classifier_is_refused(tmp_path):
    model = build("bert", T.AutoModelForSequenceClassification, num_labels=2)
    peft.get_peft_model(model, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P)).save_pretrained(
        tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"trained modules of the base model.*classifier"):
        softprompt.load(build("bert", T.AutoModelForSequenceClassification, num_labels=2), tmp_path / "a")


def test_other_peft_methods_and_broken_folders_are_refused(tmp_path):
    peft.get_peft_model(build("gpt2"), peft.LoraConfig(target_modules=["c_attn"])).save_pretrained(tmp_path / "lora")
    with pytest.raises(CheckpointError, match="LORA adapter; softprompt reads PEFT's prompt adapters"):
        softprompt.load(build("gpt2"), tmp_path / "lora")
    saved_peft_adapter("gpt2", peft_config("PROMPT_TUNING", "gpt2"), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither adapter_model.safetensors nor adapter_model.bin"):
        softprompt.load(build("gpt2"), tmp_path / "a")
    save_file({"prompt_embeddings": torch.zeros(P + 1, 32)}, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"shape \(4, 32\), its config says \(3, 32\)"):
        softprompt.load(build("gpt2"), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON"):
        softprompt.load(build("gpt2"), tmp_path / "a")


def test_pickled_adapter_weights_load(tmp_path):
    """Older PEFT folders hold adapter_model.bin; it is read with torch.load(weights_only=True)."""
    reference = saved_peft_adapter("gpt2", peft_config("PROMPT_TUNING", "gpt2"), tmp_path / "a")
    table = load_file(tmp_path / "a" / "adapter_model.safetensors")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    torch.save(table, tmp_path / "a" / "adapter_model.bin")
    pm = softprompt.load(build("gpt2"), tmp_path / "a").eval()
    batch = inputs("gpt2")
    torch.testing.assert_close(outputs(pm, batch), outputs(reference, batch, strip=P), atol=1e-5, rtol=1e-5)


def test_peft_export_onto_a_folder_of_other_files_writes_nothing(tmp_path):
    pm = softprompt.attach(build("gpt2"), softprompt.PromptTuningConfig(num_virtual_tokens=2))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "important.txt").write_text("keep me")
    with pytest.raises(softprompt.CheckpointError, match="important.txt"):
        pm.export(folder, format="peft")
    assert sorted(p.name for p in folder.iterdir()) == ["important.txt"]
    pm.export(tmp_path / "adapter", format="peft")
    pm.export(tmp_path / "adapter", format="peft")  # its own folder may be replaced
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
