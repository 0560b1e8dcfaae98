"""Nothing of a call outlives it: the base model, other PromptModels, other threads and checkpoint recomputes
never see a call's prompts. Each test runs over every (family x method) cell."""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import (ALL_CELLS, GENERATE_CELLS, PREFIX_METHODS, build, extra_inputs, layout, make_rows, method_config,
                      pad)
from transformers import LogitsProcessor, LogitsProcessorList

import softprompt
from softprompt import _attention, _call

torch.set_grad_enabled(True)


def _perturb(pm, seed=5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)


def _plain(family, lengths, seed=1):
    """The base model's own inputs (no template slots)."""
    return extra_inputs(family, pad(make_rows(family, "prompt-tuning", lengths, seed=seed), left=layout(family) == "decoder"))


def _prompted(family, method, lengths, seed=1, tokens=3):
    rows = make_rows(family, method, lengths, seed=seed, tokens=tokens)
    return extra_inputs(family, pad(rows, left=layout(family) == "decoder"))


def _labels(batch):
    return batch["decoder_input_ids"] if "decoder_input_ids" in batch else batch["input_ids"].clamp(min=0)


def _base_outputs(model, batches):
    with torch.no_grad():
        return [model(**b).logits for b in batches]


def _base_generate(model, batch):
    """The base model's own generate: its tokens and the logits of every step."""
    inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return [out.sequences, *out.logits]


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_the_base_model_is_left_as_it_was_after_every_kind_of_call(family, method):
    model = build(family)
    probes = [_plain(family, [7, 5]), _plain(family, [4], seed=3)]  # two batch sizes
    before = _base_outputs(model, probes)
    generated = None
    if layout(family) != "encoder":
        # Taken frozen, as attach leaves it: torch rounds the LM head on generate's last-position slice
        # differently (by up to ~1e-7) for weights that require grad.
        model.requires_grad_(False)
        generated = _base_generate(model, probes[0])
        model.requires_grad_(True)
    pm = softprompt.attach(model, method_config(method))
    _perturb(pm)
    batch = _prompted(family, method, [6, 4, 5])

    def unchanged():
        for got, expected in zip(_base_outputs(model, probes), before):
            assert torch.equal(got, expected)
        if generated is not None:
            assert all(torch.equal(a, b) for a, b in zip(_base_generate(model, probes[0]), generated))

    with torch.no_grad():
        pm(**batch)
    unchanged()
    pm.train()
    pm(**batch, labels=_labels(batch)).loss.backward()
    pm.eval()
    unchanged()
    if layout(family) != "encoder":
        inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
        pm.generate(**inputs, max_new_tokens=2, do_sample=False)
        unchanged()
        assert _attention._SCOPE.get() is None
        with pytest.raises(RuntimeError, match="stops generate"):  # raises inside generate, after the first forward
            pm.generate(**inputs, max_new_tokens=2, do_sample=False, logits_processor=LogitsProcessorList([_Stop()]))
        assert _attention._SCOPE.get() is None  # the generate scope is gone
        unchanged()
    with pytest.raises(Exception):
        pm(**batch, labels=torch.zeros(99, 99, dtype=torch.long))  # fails inside the base model
    unchanged()


class _Stop(LogitsProcessor):
    def __call__(self, input_ids, scores):
        raise RuntimeError("a logits processor that stops generate")


DEEP_CELLS = [c for c in ALL_CELLS if c.values[1] in PREFIX_METHODS]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize(("family", "method"), DEEP_CELLS)
def test_nothing_of_a_call_stays_alive_after_its_backward(family, method, checkpointing, monkeypatch):
    """A call's prefixes (and the autograd graph behind them) are freed with the call's outputs."""
    pm = softprompt.attach(build(family), method_config(method))
    pm.train()
    if checkpointing:
        pm.gradient_checkpointing_enable()
    made = []
    stack = _call.stack_prefixes

    def recording(*args, **kwargs):
        prompts = stack(*args, **kwargs)
        made.append(weakref.ref(prompts))
        made.extend(weakref.ref(prefix.key) for prefix in prompts.prefixes.values())
        return prompts

    monkeypatch.setattr(_call, "stack_prefixes", recording)
    batch = _prompted(family, method, [6, 4])
    outputs = pm(**batch, labels=_labels(batch), use_cache=False)
    outputs.loss.backward()
    assert len(made) > 1
    del outputs
    gc.collect()
    assert all(ref() is None for ref in made)


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_gradient_checkpointing_with_two_tasks_before_one_backward(family, method):
    """The recompute of the first task's layers must see the first task's prefix, not the second's."""
    pm = softprompt.attach(build(family), method_config(method))
    pm.add_task("other", method_config(method))
    _perturb(pm)
    pm.train()
    first, second = _prompted(family, method, [6, 4]), _prompted(family, method, [5, 5, 3], seed=7)

    def grads():
        pm.zero_grad()
        loss = pm(**first, labels=_labels(first), use_cache=False).loss
        loss = loss + pm(**second, labels=_labels(second), task="other", use_cache=False).loss
        loss.backward()
        return [p.grad.clone() for p in pm.trainable_parameters()]

    plain = grads()
    pm.gradient_checkpointing_enable()
    assert pm.base_model.is_activation_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_detach_hands_back_the_base_model_and_attaching_again_works(family, method, attention):
    model = build(family)
    model.set_attn_implementation(attention) if family != "deberta-v2" else None
    original = model.config._attn_implementation
    probes = [_plain(family, [7, 5])]
    before = _base_outputs(model, probes)
    pm = softprompt.attach(model, method_config(method))
    assert pm.original_attention == original
    _perturb(pm)
    batch = _prompted(family, method, [6, 4])
    pm.eval()
    with torch.no_grad():
        first = pm(**batch).logits
    assert pm.detach() is model
    assert model.config._attn_implementation == original
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(_base_outputs(model, probes), before))
    with pytest.raises(RuntimeError, match="detached"):
        pm(**batch)
    again = softprompt.attach(model, method_config(method))
    again.tasks.load_state_dict(pm.tasks.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, first, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_two_prompt_models_on_one_base_never_see_each_other(family, method):
    model = build(family)
    probes = [_plain(family, [7, 5])]
    before = _base_outputs(model, probes)
    one = softprompt.attach(model, method_config(method))
    two = softprompt.attach(model, method_config(method))
    _perturb(one, seed=1)
    _perturb(two, seed=2)
    batch = _prompted(family, method, [6, 4])
    with torch.no_grad():
        first, second = one(**batch).logits, two(**batch).logits
        assert not torch.allclose(first, second, atol=1e-4)
        with one.disabled():
            assert torch.equal(one(**probes[0]).logits, before[0])
            torch.testing.assert_close(two(**batch).logits, second, atol=0, rtol=0)
            with one.disabled():
                assert torch.equal(one(**probes[0]).logits, before[0])
            assert torch.equal(one(**probes[0]).logits, before[0])  # still disabled after the nested exit
            with two.disabled():
                assert torch.equal(two(**probes[0]).logits, before[0])
            torch.testing.assert_close(two(**batch).logits, second, atol=0, rtol=0)
        torch.testing.assert_close(one(**batch).logits, first, atol=0, rtol=0)
        torch.testing.assert_close(two(**batch).logits, second, atol=0, rtol=0)
    assert torch.equal(_base_outputs(model, probes)[0], before[0])
    one.detach()
    with torch.no_grad():
        torch.testing.assert_close(two(**batch).logits, second, atol=0, rtol=0)
    two.detach()
    assert torch.equal(_base_outputs(model, probes)[0], before[0])


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_calls_from_several_threads_equal_the_same_calls_in_turn(family, method):
    pm = softprompt.attach(build(family), method_config(method))
    pm.add_task("other", method_config(method, 5))
    _perturb(pm)
    can_generate = layout(family) != "encoder"
    calls = []
    for i in range(15):
        name = ["default", "other", None][i % 3]  # None: the base model's own call, inside pm.disabled()
        tokens = 3 if name == "default" else 5
        batch = (_plain(family, [4 + i % 2, 6][: 1 + i % 2], seed=20 + i) if name is None else
                 _prompted(family, method, [4 + i % 3, 6, 3][: 1 + i % 3], seed=20 + i, tokens=tokens))
        calls.append((name, batch, can_generate and i % 4 == 3))

    def run(call):
        name, batch, generate = call
        if name is None:
            with pm.disabled(), torch.no_grad():
                return pm(**batch).logits
        with torch.no_grad():
            if generate:
                inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
                return pm.generate(**inputs, task=name, max_new_tokens=3, do_sample=False)
            return pm(**batch, task=name).logits

    in_turn = [run(c) for c in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, calls * 3))
    for i, got in enumerate(together):
        torch.testing.assert_close(got, in_turn[i % len(calls)], atol=1e-6, rtol=1e-6)


REUSE_CELLS = [c for c in GENERATE_CELLS if c.values[1] in ("prompt-tuning", "p-tuning", "p-tuning-plain")
               and layout(c.values[0]) == "decoder"]


@pytest.mark.parametrize(("family", "method"), REUSE_CELLS)
def test_reused_prompt_keys_and_values_equal_the_uncached_path(family, method):
    """At inference, soft tokens that open a causal decoder's input enter as a reused key/value prefix."""
    pm = softprompt.attach(build(family), method_config(method, 4))
    pm.add_task("deep", method_config("prefix-tuning", 2))
    _perturb(pm)
    rows = make_rows(family, method, [9, 4, 6], tokens=4) + make_rows(family, "prefix-tuning", [5], seed=4)
    batch = pad(rows, left=True)
    names = ["default"] * 3 + ["deep"]
    with torch.no_grad():
        reused = pm(**batch, task=names).logits
        assert pm.tasks["default"].input_prompt._reused is not None
        pm.reuse_prompt_kv = False
        uncached = pm(**batch, task=names).logits
        pm.reuse_prompt_kv = True
    real = batch["attention_mask"].bool() & (batch["input_ids"] >= 0)
    torch.testing.assert_close(reused[real], uncached[real], atol=1e-5, rtol=1e-5)

    inputs = {k: v[:3] for k, v in batch.items()}
    kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    fast = pm.generate(**inputs, **kwargs)
    pm.reuse_prompt_kv = False
    slow = pm.generate(**inputs, **kwargs)
    assert torch.equal(fast.sequences, slow.sequences)
    for a, b in zip(fast.logits, slow.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reused_prefix_follows_the_prompt_when_it_changes():
    pm = softprompt.attach(build("llama"), method_config("prompt-tuning", 4))
    pm.eval()
    batch = pad(make_rows("llama", "prompt-tuning", [6]), left=True)
    with torch.no_grad():
        before = pm(**batch).logits
        _perturb(pm)
        after = pm(**batch).logits
        pm.reuse_prompt_kv = False
        expected = pm(**batch).logits
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_training_mode_and_gradients_take_the_uncached_path():
    pm = softprompt.attach(build("gpt2"), method_config("prompt-tuning", 4))
    _perturb(pm)
    batch = pad(make_rows("gpt2", "prompt-tuning", [6, 3]), left=True)
    pm.eval()
    loss = pm(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert pm.tasks["default"].input_prompt._reused is None
    assert pm.tasks["default"].input_prompt.encoder.weight.grad.abs().sum() > 0


WINDOW_CELLS = [c for c in GENERATE_CELLS if c.values[1] in ("prompt-tuning", "p-tuning-plain") and layout(c.values[0]) == "decoder"]


@pytest.mark.parametrize(("family", "method"), WINDOW_CELLS)
@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "right-padded"])
def test_the_lm_head_on_the_callers_positions_gives_the_full_computation(family, method, left):
    """Soft tokens before the input: the LM head runs on the caller's positions (and the one before them) only."""
    pm = softprompt.attach(build(family), method_config(method, 4))
    pm.add_task("short", method_config(method, 2))
    pm.add_task("none", method_config("prefix-tuning", 2))
    _perturb(pm)
    pm.train()
    rows = make_rows(family, method, [7, 3, 5, 4], seed=3)
    batch = pad(rows, left=left)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    names = ["default", "short", "none", "default"]
    torch.manual_seed(0)
    windowed = pm(**batch, labels=labels, task=names)
    torch.manual_seed(0)
    full = pm(**batch, labels=labels, task=names, logits_to_keep=0)  # every position through the head
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(windowed.logits[real], full.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(windowed.loss, full.loss, atol=1e-6, rtol=1e-6)
    windowed.loss.backward()
    assert all(p.grad is not None for p in pm.tasks["default"].parameters())


@pytest.mark.parametrize(("family", "method"), [c for c in GENERATE_CELLS if layout(c.values[0]) == "decoder"])
def test_a_decoding_loop_of_its_own_over_prepare_equals_generate(family, method):
    """An engine that drives the base model with its own cache (as a server does) gets generate's tokens."""
    from transformers import DynamicCache

    pm = softprompt.attach(build(family), method_config(method))
    _perturb(pm)
    pm.eval()
    batch = _prompted(family, method, [6, 4])
    expected = pm.generate(**batch, max_new_tokens=4, do_sample=False)[:, -4:]
    with torch.no_grad():
        inputs = pm.prepare(**batch)
        mask = inputs["attention_mask"]
        cache = DynamicCache(config=pm.base_model.config)
        tokens = []
        logits = pm.base_model(**inputs, past_key_values=cache, use_cache=True).logits[:, -1]
        for _ in range(4):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step = pm.prepare(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            logits = pm.base_model(**step).logits[:, -1]
    assert torch.equal(torch.cat(tokens, dim=1), expected)


def test_flex_attention_runs_through_sdpa_while_attached_and_comes_back_on_detach():
    model = build("llama")
    model.set_attn_implementation("flex_attention")
    probe = _plain("llama", [7, 5])
    before = _base_outputs(model, [probe])[0]
    with pytest.warns(UserWarning, match="runs through SDPA .*'flex_attention' back on detach"):
        pm = softprompt.attach(model, method_config("prefix-tuning"))
    assert pm.original_attention == "flex_attention"
    _perturb(pm)
    with torch.no_grad():
        pm(**_prompted("llama", "prefix-tuning", [6, 4]))
    torch.testing.assert_close(_base_outputs(model, [probe])[0], before, atol=1e-6, rtol=1e-6)  # SDPA, not flex
    pm.detach()
    assert model.config._attn_implementation == "flex_attention"
    assert torch.equal(_base_outputs(model, [probe])[0], before)
