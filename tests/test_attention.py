"""The pieces of the shared attention function against tensors written out by hand: the mask widening,
the prefix columns (padding of shorter prompts, sliding windows), the row repeat, and the attention
with a prefix against attention computed directly."""

from __future__ import annotations

import math

import pytest
import torch

from softprompt._attention import (
    KWARG,
    NAMES,
    Prefix,
    Prompts,
    prefix_columns,
    repeat_rows,
    scope,
    widen_mask,
)

T, F = True, False
CPU = torch.device("cpu")


def test_no_mask_and_no_hidden_prefix_columns_stays_no_mask():
    assert widen_mask(None, None, 2, 3, 3, 2, causal=False, additive=None, device=CPU) is None


def test_causal_without_mask_becomes_bottom_right_aligned():
    # 2 prefix columns, then 3 real keys; query i sees the prefix and real keys 0..i.
    got = widen_mask(None, None, 1, 3, 3, 2, causal=True, additive=None, device=CPU)
    expected = torch.tensor([[T, T, T, F, F], [T, T, T, T, F], [T, T, T, T, T]])
    assert torch.equal(got, expected[None, None])


def test_causal_after_a_cache_aligns_the_last_query_with_the_last_key():
    # 2 new queries after 2 cached keys (kv = 4), prefix 1.
    got = widen_mask(None, None, 1, 2, 4, 1, causal=True, additive=None, device=CPU)
    expected = torch.tensor([[T, T, T, T, F], [T, T, T, T, T]])
    assert torch.equal(got, expected[None, None])


def test_a_boolean_padding_mask_gets_the_prefix_columns_first():
    mask = torch.tensor([[[[F, T, T], [F, T, T], [F, T, T]]]])  # (1, 1, 3, 3): key 0 is padding
    columns = torch.tensor([[T, F]])[:, None, None, :].expand(1, 1, 3, 2)  # the second prefix column is padding
    got = widen_mask(mask, columns, 1, 3, 3, 2, causal=False, additive=None, device=CPU)
    expected = torch.tensor([[T, F, F, T, T]] * 3)
    assert torch.equal(got, expected[None, None])


def test_an_additive_mask_gets_additive_prefix_columns():
    low = torch.finfo(torch.float32).min
    mask = torch.tensor([[[[0.0, low]]]])  # (1, 1, 1, 2)
    columns = torch.tensor([[[[T, F]]]])
    got = widen_mask(mask, columns, 1, 1, 2, 2, causal=False, additive=torch.float32, device=CPU)
    assert torch.equal(got, torch.tensor([[[[0.0, low, 0.0, low]]]]))


def test_eager_gets_an_additive_mask_in_the_query_dtype():
    got = widen_mask(None, None, 1, 2, 2, 1, causal=True, additive=torch.bfloat16, device=CPU)
    low = torch.finfo(torch.bfloat16).min
    expected = torch.tensor([[0.0, 0.0, low], [0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected[None, None])


def test_prefix_columns_of_a_mixed_batch_hide_padded_positions():
    prefix = Prefix(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), mask=torch.tensor([[T, T, T], [T, F, F]]))
    got = prefix_columns(prefix, 2, 2, None, None)
    assert got.shape == (2, 1, 2, 3)
    assert torch.equal(got[1, 0], torch.tensor([[T, F, F], [T, F, F]]))
    assert prefix_columns(Prefix(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), 2, 2, None, None) is None


def test_reused_soft_tokens_leave_a_sliding_window_as_tokens_would():
    # Soft tokens at positions 0, 1, 2; queries at positions 3 and 5; window 4: position 5 no longer sees 0 and 1.
    prefix = Prefix(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4), positions=torch.tensor([[0, 1, 2]]))
    got = prefix_columns(prefix, 1, 2, torch.tensor([[3, 5]]), sliding_window=4)
    assert torch.equal(got[0, 0], torch.tensor([[T, T, T], [F, F, T]]))
    assert prefix_columns(prefix, 1, 2, torch.tensor([[3, 5]]), sliding_window=None) is None


def test_repeat_rows_follows_beam_search_and_broadcasts_a_shared_prefix():
    rows = torch.tensor([[1], [2]])
    assert torch.equal(repeat_rows(rows, 4), torch.tensor([[1], [1], [2], [2]]))
    assert repeat_rows(torch.tensor([[7]]), 3).tolist() == [[7], [7], [7]]
    with pytest.raises(RuntimeError, match="does not divide"):
        repeat_rows(rows, 3)


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1


@pytest.mark.parametrize("kind", ["sdpa", "eager"])
def test_attention_with_a_prefix_equals_attention_over_the_concatenated_keys(kind, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if kind == "eager":  # the module's family defines eager_attention_forward; give the test module one
        import sys

        from transformers.models.llama.modeling_llama import eager_attention_forward

        monkeypatch.setattr(sys.modules[__name__], "eager_attention_forward", eager_attention_forward, raising=False)
    attention = ALL_ATTENTION_FUNCTIONS[NAMES[kind]]
    torch.manual_seed(0)
    module = _Attention()
    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    prefix_key, prefix_value = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4)
    prompts = Prompts({id(module): Prefix(prefix_key, prefix_value)})
    out, _ = attention(module, query, key, value, None, scaling=0.5, **{KWARG: prompts})
    keys, values = torch.cat([prefix_key, key], 2), torch.cat([prefix_value, value], 2)
    scores = query @ keys.transpose(-1, -2) * 0.5
    visible = torch.tensor([[T, T, T, F, F], [T, T, T, T, F], [T, T, T, T, T]])
    expected = (scores.masked_fill(~visible, -math.inf).softmax(-1) @ values).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # With padding (a boolean mask) the widened mask gives the same attention.
    masked, _ = attention(module, query, key, value, torch.ones(1, 1, 3, 3, dtype=torch.bool).tril(), scaling=0.5,
                          **{KWARG: prompts})
    torch.testing.assert_close(masked, expected, atol=1e-6, rtol=1e-6)
    # Without prompts (or inside a scope of another call) the module's own attention runs.
    plain, _ = attention(module, query, key, value, None, scaling=0.5)
    with scope(Prompts()):
        scoped, _ = attention(module, query, key, value, None, scaling=0.5)
    assert torch.equal(plain, scoped)
    with scope(prompts):
        torch.testing.assert_close(attention(module, query, key, value, None, scaling=0.5)[0], expected, atol=1e-6, rtol=1e-6)
