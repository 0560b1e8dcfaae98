"""The batching engine: rows of every task and the bare model share forwards, join a running batch and leave it,
and each greedy row gets exactly the tokens `PromptModel.generate` gives it alone."""

from __future__ import annotations

import threading

import pytest
from transformers import AutoModel
import torch
from conftest import build, method_config

import softprompt
from softprompt._engine import Engine, Generation, NoPrompt, QueueFull, Scoring, ShuttingDown
from softprompt.model import pad_rows

from _serving import paused, perturb, wait_for

# name: (method, options); soft tokens after the input or after BOS stay in the input (and the cache) at inference.
TASKS = {"pt": ("prompt-tuning", {}), "pre": ("prefix-tuning", {}), "v2": ("p-tuning-v2", {}),
         "plain": ("p-tuning-plain", {}), "suffix": ("prompt-tuning", {"placement": "suffix"}),
         "bos": ("prompt-tuning", {"placement": "after_bos"})}


class Listener:
    """Collects one row's events from the engine's thread."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.end: tuple[str, object] | None = None
        self.done = threading.Event()

    def __call__(self, event: str, value) -> None:
        if event == "token":
            self.tokens.append(value)
        else:
            self.end = (event, value)
            self.done.set()


def served(family: str) -> softprompt.PromptModel:
    """Prompts of every method (of different sizes and placements) on one tiny model, and the bare model as 'bare'."""
    pm = softprompt.PromptModel(build(family), None)
    for size, (name, (method, options)) in enumerate(TASKS.items(), start=2):
        pm.add_task(name, method_config(method, tokens=size, **options))
    perturb(pm, 3)
    pm.tasks["bare"] = NoPrompt()
    return pm.eval()


def alone(pm, ids: list[int], task: str, tokens: int) -> list[int]:
    """What generate gives the row by itself (the bare model: the base model's own generate)."""
    batch = pad_rows([ids], 0, left=True)
    if task == "bare":
        out = pm.base_model.generate(**batch, max_new_tokens=tokens, do_sample=False)
    else:
        out = pm.generate(**batch, task=task, max_new_tokens=tokens, do_sample=False)
    return out[0, len(ids):].tolist()


def rows_of(count: int, seed: int = 0) -> list[tuple[list[int], str]]:
    generator = torch.Generator().manual_seed(seed)
    names = [*TASKS, "bare"]
    return [(torch.randint(4, 96, (int(torch.randint(2, 12, (1,), generator=generator)),), generator=generator).tolist(),
             names[i % len(names)]) for i in range(count)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rows_joining_a_running_batch_decode_as_generate_does_alone(family):
    pm = served(family)
    steps: list[tuple[str, int, int]] = []
    engine = Engine(pm, max_batch_size=4, on_step=lambda kind, rows, _: steps.append((kind, rows, engine.active)))
    rows = rows_of(16)
    expected = [alone(pm, ids, task, 6 + i) for i, (ids, task) in enumerate(rows)]
    listeners = [Listener() for _ in rows]
    engine.start()
    try:
        for i, ((ids, task), listener) in enumerate(zip(rows, listeners)):
            engine.submit([Generation(task, ids, 6 + i, listener)])
            if i % 3 == 2:  # let the batch decode a little before the next rows arrive
                wait_for(lambda: len(listener.tokens) >= 1 or listener.done.is_set(), what="a first token")
        for listener in listeners:
            assert listener.done.wait(60)
    finally:
        engine.stop(60)
    assert [listener.tokens for listener in listeners] == expected
    assert all(listener.end[0] == "finish" for listener in listeners)
    assert len({task for _, task in rows}) == len(TASKS) + 1
    # Rows were prefilled while others were decoding, and decoding steps held rows of several sizes.
    assert any(kind == "prefill" and active > 0 for kind, _, active in steps)
    assert max(rows for kind, rows, _ in steps if kind == "decode") == 4
    assert engine.active == 0


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=8)
    engine.eos = set()  # nothing ends the long row but its cancellation
    (long_ids, _), (ids, task) = rows_of(2, seed=4)
    expected = alone(pm, ids, task, 12)
    long_row, other = Listener(), Listener()
    engine.start()
    try:
        with paused(engine):
            cut = Generation("v2", long_ids, 100, long_row)
            engine.submit([cut, Generation(task, ids, 12, other)])
        wait_for(lambda: len(long_row.tokens) >= 3, what="three tokens")
        engine.cancel(cut)
        assert long_row.done.wait(30) and other.done.wait(30)
        wait_for(lambda: engine.active == 0, what="an empty batch")
    finally:
        engine.stop(30)
    assert long_row.end == ("finish", "cancelled") and len(long_row.tokens) < 100
    assert other.tokens == expected


def test_a_row_that_leaves_takes_its_cache_columns_with_it():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=8)
    engine.eos = set()
    short, long = Listener(), Listener()
    engine.start()
    try:
        with paused(engine):
            engine.submit([Generation("pt", list(range(4, 40)), 2, long), Generation("bare", [5, 6], 30, short)])
        assert long.done.wait(30)
        with paused(engine):  # between two steps: the long input's columns are gone
            width = engine._mask.shape[1]
            assert engine.active == 1 and width < 36
            assert bool(engine._mask.all())
        assert short.done.wait(30)
    finally:
        engine.stop(30)
    assert short.tokens == alone(pm, [5, 6], "bare", 30)


def test_a_seeded_row_samples_the_same_tokens_in_any_batch():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=8)
    ids = [7, 8, 9, 10]
    runs = []
    engine.start()
    try:
        for company in (0, 5):
            mine, others = Listener(), [Listener() for _ in range(company)]
            engine.submit([Generation("v2", ids, 10, mine, temperature=1.5, top_p=0.9, seed=11),
                           *[Generation(t, i, 10, o, temperature=1.0) for (i, t), o in zip(rows_of(company, 2), others)]])
            assert mine.done.wait(30) and all(o.done.wait(30) for o in others)
            runs.append(mine.tokens)
        other_seed = Listener()
        engine.submit([Generation("v2", ids, 10, other_seed, temperature=1.5, top_p=0.9, seed=12)])
        assert other_seed.done.wait(30)
    finally:
        engine.stop(30)
    assert runs[0] == runs[1]
    assert other_seed.tokens != runs[0]


def test_classification_rows_of_several_tasks_score_as_one_forward_of_each_does():
    pm = softprompt.attach(build("bert", auto=AutoModel),
                           method_config("p-tuning-v2", head="sequence-classification", num_labels=3), task="a")
    pm.add_task("b", method_config("prefix-tuning", head="sequence-classification", num_labels=2))
    pm.add_task("c", method_config("p-tuning-v2", head="token-classification", num_labels=4))
    perturb(pm, 2)
    pm.eval()
    rows = [([1, 5, 6, 7], "a"), ([1, 9, 10], "b"), ([1, 11, 12, 13, 14], "c"), ([1, 8], "a"), ([1, 20, 21], "c")]
    results: list = [None] * len(rows)
    forwards: list[int] = []
    engine = Engine(pm, max_batch_size=8, on_step=lambda kind, rows, _: forwards.append(rows))
    with paused_start(engine):
        engine.submit([Scoring(t, ids, lambda r, i=i: results.__setitem__(i, r)) for i, (ids, t) in enumerate(rows)])
    wait_for(lambda: all(r is not None for r in results), what="the scores")
    engine.stop(30)
    assert forwards == [3, 2]  # the sequence heads (tasks a and b) in one forward, the token head in another
    for (ids, task), got in zip(rows, results):
        with torch.no_grad():
            want = pm(**pad_rows([ids], 0, left=False), task=task).logits[0]  # (C,) or (T, C)
        width = want.shape[-1]
        assert got.shape[:-1] == want.shape[:-1]
        torch.testing.assert_close(got[..., :width], want, rtol=1e-5, atol=1e-5)
        assert bool((got[..., width:] == float("-inf")).all())  # a narrower head's missing classes


def paused_start(engine):
    """Start the engine held at a pause, so that everything submitted inside arrives at once."""
    engine.start()
    return paused(engine)


def test_a_full_queue_refuses_and_a_stopping_engine_takes_nothing_new():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=1, max_queue=2)
    listeners = [Listener() for _ in range(3)]
    with paused_start(engine):
        engine.submit([Generation("pt", [5, 6], 3, listeners[0]), Generation("pt", [5, 7], 3, listeners[1])])
        with pytest.raises(QueueFull, match="at most 2"):
            engine.submit([Generation("pt", [5, 8], 3, listeners[2])])
        assert engine.waiting == 2
    engine.stop(30)
    assert listeners[0].done.is_set() and listeners[1].done.is_set()  # stop finished the rows it had taken
    with pytest.raises(ShuttingDown):
        engine.submit([Generation("pt", [5, 8], 3, listeners[2])])


def test_a_failing_forward_fails_its_rows_only_and_the_engine_goes_on():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=4)
    bad, good = Listener(), Listener()
    engine.start()
    try:
        engine.submit([Generation("no-such-task", [5, 6], 3, bad)])
        assert bad.done.wait(30)
        engine.submit([Generation("pt", [5, 6], 3, good)])
        assert good.done.wait(30)
    finally:
        engine.stop(30)
    assert bad.end[0] == "error" and "no-such-task" in bad.end[1]
    assert good.tokens == alone(pm, [5, 6], "pt", 3)


def test_a_retired_task_leaves_the_model_once_its_rows_end():
    pm = served("gpt2")
    engine = Engine(pm, max_batch_size=4)
    engine.eos = set()
    row = Listener()
    engine.start()
    try:
        with paused(engine):
            engine.submit([Generation("pre", [5, 6], 20, row)])
            engine.retire("pre")
        assert row.done.wait(30)
        wait_for(lambda: "pre" not in pm.tasks, what="the task to leave")
    finally:
        engine.stop(30)
    assert row.end == ("finish", "length") and len(row.tokens) == 20


def test_models_whose_cache_keeps_a_sliding_window_are_refused():
    pm = softprompt.attach(build("mistral"), method_config("prompt-tuning"))
    with pytest.raises(ValueError, match="sliding-window"):
        Engine(pm)
