"""The invariants every (family x method) cell keeps: each a test over the whole support matrix."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_CELLS,
    BOS,
    GENERATE_CELLS,
    build,
    extra_inputs,
    layout,
    make_rows,
    method_config,
    pad,
)

import softprompt

torch.set_grad_enabled(True)


def _attach(family, method, tokens=3, **overrides):
    model = build(family)
    pm = softprompt.attach(model, method_config(method, tokens, **overrides))
    _perturb(pm)
    return model, pm


def _perturb(pm, seed=5):
    """Move every trainable tensor (heads included) away from its start, so a prompt has a real effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)


def _batch(family, method, lengths, seed=1, tokens=3):
    rows = make_rows(family, method, lengths, seed=seed, tokens=tokens)
    return extra_inputs(family, pad(rows, left=layout(family) == "decoder")), rows


def _row_alone(family, rows, i, batch):
    alone = extra_inputs(family, pad([rows[i]], left=False))
    if "decoder_input_ids" in batch:
        alone["decoder_input_ids"] = batch["decoder_input_ids"][i : i + 1]
    return alone


def _real(logits_row, mask_row, family):
    return logits_row if layout(family) == "encoder-decoder" else logits_row[mask_row.bool()]


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_disabled_is_exactly_the_base_model(family, method):
    model, pm = _attach(family, method)
    batch, _ = _batch(family, "prompt-tuning", [7, 5])  # plain token ids: the base model's own inputs
    reference = build(family)  # same seed, same weights, never attached
    with torch.no_grad():
        expected = reference(**batch).logits
        with pm.disabled():
            got = pm(**batch).logits
        enabled = pm(**(_batch(family, method, [7, 5])[0])).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(enabled[:, -1], expected[:, -1], atol=1e-4), "the prompt must change the output"


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_padding_invariance(family, method):
    _, pm = _attach(family, method)
    batch, rows = _batch(family, method, [8, 5, 3])
    with torch.no_grad():
        together = pm(**batch).logits
        for i in range(len(rows)):
            alone = pm(**_row_alone(family, rows, i, batch)).logits[0]
            got = _real(together[i], batch["attention_mask"][i], family)
            torch.testing.assert_close(got, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "method"), [c for c in ALL_CELLS if c.values[0] in ("gpt2", "llama")])
def test_right_padding_in_training_batches(family, method):
    """Decoder-only training batches are right-padded: each row still equals itself alone."""
    _, pm = _attach(family, method)
    rows = make_rows(family, method, [8, 4])
    batch = pad(rows, left=False)
    with torch.no_grad():
        together = pm(**batch).logits
        alone = pm(**pad([rows[1]], left=False)).logits[0]
    torch.testing.assert_close(together[1][batch["attention_mask"][1].bool()], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_mixed_task_batch_matches_each_row_alone(family, method):
    _, pm = _attach(family, method, tokens=3)
    pm.add_task("longer", method_config(method, 5))
    pm.add_task("plain", method_config("prompt-tuning", 2))
    _perturb(pm, seed=6)
    names = ["default", "longer", "plain", "default"]
    tokens = {"default": 3, "longer": 5, "plain": 2}
    methods = {"default": method, "longer": method, "plain": "prompt-tuning"}
    rows = [make_rows(family, methods[n], [length], seed=10 + i, tokens=tokens[n])[0]
            for i, (n, length) in enumerate(zip(names, [6, 4, 5, 3]))]
    batch = extra_inputs(family, pad(rows, left=layout(family) == "decoder"))
    with torch.no_grad():
        together = pm(**batch, task=names).logits
        for i, name in enumerate(names):
            alone = pm(**_row_alone(family, rows, i, batch), task=name).logits[0]
            got = _real(together[i], batch["attention_mask"][i], family)
            torch.testing.assert_close(got, alone, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown task"):
        pm(**batch, task=["default", "nope", "plain", "default"])
    with pytest.raises(ValueError, match="one per row"):
        pm(**batch, task=["default", "plain"])


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_only_prompt_parameters_train(family, method):
    model, pm = _attach(family, method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-2)
    batch, _ = _batch(family, method, [6, 4])
    labels = batch["decoder_input_ids"] if "decoder_input_ids" in batch else batch["input_ids"].clamp(min=0)
    prompt_before = [p.clone() for p in pm.trainable_parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        pm(**batch, labels=labels).loss.backward()
        assert all(p.grad is None for p in model.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pm.trainable_parameters())
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(prompt_before, pm.trainable_parameters()))


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_gradient_checkpointing_gives_the_same_gradients(family, method):
    _, pm = _attach(family, method)
    pm.train()
    batch, _ = _batch(family, method, [6, 4])
    labels = batch["decoder_input_ids"] if "decoder_input_ids" in batch else batch["input_ids"].clamp(min=0)

    def grads():
        pm.zero_grad()
        pm(**batch, labels=labels, use_cache=False).loss.backward()
        return [p.grad.clone() for p in pm.trainable_parameters()]

    plain = grads()
    pm.gradient_checkpointing_enable()
    assert pm.base_model.is_activation_checkpointing
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "method"), GENERATE_CELLS)
@pytest.mark.parametrize("lengths", [[6], [7, 4, 5]], ids=["batch1", "left-padded"])
def test_generate_with_cache_equals_greedy_loop_without(family, method, lengths):
    _, pm = _attach(family, method)
    batch, rows = _batch(family, method, lengths)
    steps = 5
    out = pm.generate(**{k: v for k, v in batch.items() if k != "decoder_input_ids"}, max_new_tokens=steps,
                      do_sample=False, output_logits=True, return_dict_in_generate=True, use_cache=True)
    new_tokens = out.sequences[:, -steps:]
    with torch.no_grad():
        if layout(family) == "encoder-decoder":
            start = pm.base_model.generation_config.decoder_start_token_id
            current = torch.full((len(lengths), 1), start)
            for step in range(steps):
                logits = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=current, use_cache=False).logits[:, -1]
                torch.testing.assert_close(out.logits[step], logits, atol=1e-5, rtol=1e-5)
                current = torch.cat([current, logits.argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(current[:, 1:], new_tokens)
        else:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            for step in range(steps):
                logits = pm(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
                torch.testing.assert_close(out.logits[step], logits, atol=1e-5, rtol=1e-5)
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            assert torch.equal(ids[:, -steps:], new_tokens)
            assert torch.equal(out.sequences[:, : batch["input_ids"].shape[1]],
                               batch["input_ids"].masked_fill(batch["input_ids"] < 0, 0))


@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_save_load_resumes_training_and_export_gives_the_same_outputs(family, method, tmp_path):
    model, pm = _attach(family, method)
    pm.train()
    batch, _ = _batch(family, method, [6, 4])
    labels = batch["decoder_input_ids"] if "decoder_input_ids" in batch else batch["input_ids"].clamp(min=0)
    optimizer = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-2)
    pm(**batch, labels=labels).loss.backward()
    optimizer.step()
    pm.save(tmp_path / "ckpt")
    pm.export(tmp_path / "export")
    loaded = softprompt.load(model, tmp_path / "ckpt")
    loaded.train()
    assert [n for n, _ in loaded.tasks.named_parameters()] == [n for n, _ in pm.tasks.named_parameters()]
    torch.manual_seed(3)
    expected = pm(**batch, labels=labels).loss
    torch.manual_seed(3)
    torch.testing.assert_close(loaded(**batch, labels=labels).loss, expected, atol=0, rtol=0)
    exported = softprompt.load(model, tmp_path / "export")
    pm.eval()
    exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, pm(**batch).logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("family", "method"), [c for c in ALL_CELLS if c.values[0] in ("gpt2", "bert", "t5")])
def test_checkpoint_on_another_base_model_is_refused(family, method, tmp_path):
    _, pm = _attach(family, method)
    pm.save(tmp_path / "ckpt")
    others = {
        "other weights": build(family, seed=1),
        "other vocabulary": build(family, vocab_size=97),
        "other layer count": build(family, **({"n_layer": 3} if family == "gpt2" else {"num_layers": 3} if family == "t5"
                                              else {"num_hidden_layers": 3})),
    }
    for what, other in others.items():
        with pytest.raises(softprompt.CheckpointError, match="another base model"):
            softprompt.load(other, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").with_name(".ckpt.old").exists()


def test_a_bos_row_keeps_its_bos_first_with_after_bos_placement():
    model, pm = _attach("llama", "prompt-tuning", placement="after_bos")
    rows = [[BOS, 10, 11, 12]]
    with torch.no_grad():
        out = pm(**pad(rows, left=True)).logits
    assert out.shape == (1, 4, model.config.vocab_size)
