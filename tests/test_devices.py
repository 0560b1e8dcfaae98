"""The invariants on other devices and floating-point types: bfloat16 on the CPU, and float32 / bfloat16 on CUDA.

Every (family x method) cell, with the model, the prompts and the inputs moved to the device and cast
to the type. Exactness (the disabled prompt model and the base model after a call give the base
model's own outputs) holds bit for bit everywhere; the comparisons of different computations of the
same numbers (a row in a padded or mixed-task batch against the row alone, cached generation against
an uncached loop) hold within the type's resolution. The CUDA placements run where torch sees a GPU
(``bench/gpu.sh`` runs this module there) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_CELLS, GENERATE_CELLS, build, extra_inputs, layout, make_rows, method_config, pad

import softprompt

_CUDA = torch.cuda.is_available()
_NO_CUDA = pytest.mark.skipif(not _CUDA, reason="torch sees no CUDA device here")
PLACEMENTS = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float32, id="cuda-fp32", marks=_NO_CUDA),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=_NO_CUDA),
]
# (atol, rtol) for two computations of the same numbers: float32 keeps the CPU suite's bound, bfloat16
# (8 bits of mantissa) about two units in the last place of logits of order 1.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def _placed(family: str, method: str, device: str, dtype: torch.dtype, tokens: int = 3):
    model = build(family).to(device=device, dtype=dtype)
    pm = softprompt.attach(model, method_config(method, tokens))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_((torch.randn(p.shape, generator=generator) * 0.3).to(p.device, p.dtype))
    return model, pm


def _on(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _batch(family: str, method: str, lengths: list[int], device: str, seed: int = 1):
    rows = make_rows(family, method, lengths, seed=seed)
    return _on(extra_inputs(family, pad(rows, left=layout(family) == "decoder")), device), rows


def _alone(family: str, rows: list[list[int]], i: int, batch: dict, device: str) -> dict:
    alone = _on(extra_inputs(family, pad([rows[i]], left=False)), device)
    if "decoder_input_ids" in batch:
        alone["decoder_input_ids"] = batch["decoder_input_ids"][i : i + 1]
    return alone


def _real(logits_row: torch.Tensor, mask_row: torch.Tensor, family: str) -> torch.Tensor:
    return logits_row if layout(family) == "encoder-decoder" else logits_row[mask_row.bool()]


def _near(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Within the type's tolerance (as torch.testing.assert_close judges it)."""
    atol, rtol = TOLERANCE[dtype]
    return bool(torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol))


@pytest.mark.parametrize(("device", "dtype"), PLACEMENTS)
@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_the_base_model_and_the_disabled_prompt_are_exact(family, method, device, dtype):
    model, pm = _placed(family, method, device, dtype)
    plain, _ = _batch(family, "prompt-tuning", [7, 5], device)
    with torch.no_grad():
        before = model(**plain).logits
        prompted, _ = _batch(family, method, [7, 5], device)
        enabled = pm(**prompted).logits
        with pm.disabled():
            disabled = pm(**plain).logits
        after = model(**plain).logits
    assert enabled.device.type == device and enabled.dtype == dtype
    assert torch.equal(disabled, before)
    assert torch.equal(after, before)
    assert not torch.equal(enabled[:, -1], before[:, -1]), "the prompt must act"


@pytest.mark.parametrize(("device", "dtype"), PLACEMENTS)
@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_padded_and_mixed_task_rows_equal_each_row_alone(family, method, device, dtype):
    _, pm = _placed(family, method, device, dtype)
    pm.add_task("plain", method_config("prompt-tuning", 2))
    pm.to(device=device, dtype=dtype)
    names = ["default", "plain", "default"]
    methods = {"default": method, "plain": "prompt-tuning"}
    tokens = {"default": 3, "plain": 2}
    rows = [make_rows(family, methods[n], [length], seed=10 + i, tokens=tokens[n])[0]
            for i, (n, length) in enumerate(zip(names, [8, 5, 3]))]
    batch = _on(extra_inputs(family, pad(rows, left=layout(family) == "decoder")), device)
    with torch.no_grad():
        together = pm(**batch, task=names).logits
        for i, name in enumerate(names):
            alone = pm(**_alone(family, rows, i, batch, device), task=name).logits[0]
            assert _near(_real(together[i], batch["attention_mask"][i], family), alone, dtype)


@pytest.mark.parametrize(("device", "dtype"), PLACEMENTS)
@pytest.mark.parametrize(("family", "method"), GENERATE_CELLS)
def test_generate_with_cache_follows_the_uncached_loop(family, method, device, dtype):
    """Each cached step's logits are the uncached loop's on the same tokens; in float32 the tokens are its argmax."""
    _, pm = _placed(family, method, device, dtype)
    batch, _ = _batch(family, method, [7, 4, 5], device)
    steps = 4
    inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    out = pm.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True,
                      return_dict_in_generate=True, use_cache=True)
    new = out.sequences[:, -steps:]
    with torch.no_grad():
        if layout(family) == "encoder-decoder":
            start = pm.base_model.generation_config.decoder_start_token_id
            current = torch.full((3, 1), start, device=device)
            for step in range(steps):
                logits = pm(**inputs, decoder_input_ids=current, use_cache=False).logits[:, -1]
                assert _near(out.logits[step], logits, dtype)
                if dtype == torch.float32:
                    assert torch.equal(new[:, step], logits.argmax(-1))
                current = torch.cat([current, new[:, step : step + 1]], dim=1)  # follow generate's own tokens
        else:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            for step in range(steps):
                logits = pm(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
                assert _near(out.logits[step], logits, dtype)
                if dtype == torch.float32:
                    assert torch.equal(new[:, step], logits.argmax(-1))
                ids = torch.cat([ids, new[:, step : step + 1]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


@pytest.mark.parametrize(("device", "dtype"), PLACEMENTS)
@pytest.mark.parametrize(("family", "method"), ALL_CELLS)
def test_a_training_step_reaches_only_the_prompt(family, method, device, dtype):
    model, pm = _placed(family, method, device, dtype)
    pm.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    batch, _ = _batch(family, method, [6, 4], device)
    labels = batch["decoder_input_ids"] if "decoder_input_ids" in batch else batch["input_ids"].clamp(min=0)
    pm(**batch, labels=labels).loss.backward()
    grads = [p.grad for p in pm.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
