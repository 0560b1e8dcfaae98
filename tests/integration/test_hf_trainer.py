"""transformers.Trainer trains a PromptModel: only the prompt (and head) learn and get saved, and
save_strategy, resume_from_checkpoint, load_best_model_at_end, gradient accumulation and activation
checkpointing behave as they do for a PreTrainedModel.

What Trainer (transformers 5.24) needs from a plain ``nn.Module``:
- saving (``Trainer._save``) writes ``model.state_dict()`` with ``safetensors.save_file``; a state
  dict holding the frozen base model is large and, with tied embeddings, refused by safetensors, so
  ``PromptModel.state_dict()`` must hold the tasks only;
- resuming and ``load_best_model_at_end`` call ``model.load_state_dict(state_dict, False)`` and warn
  about missing keys (reading ``model._keys_to_ignore_on_save``), so loading a tasks-only state
  dict must report no missing base keys;
- a ``forward(**kwargs)`` makes Trainer pass ``num_items_in_batch`` and skip its division by the
  accumulation steps; PromptModel's losses are means, so it declares ``accepts_loss_kwargs = False``;
- ``activation_checkpointing=True`` calls ``activation_checkpointing_enable(activation_checkpointing_kwargs=...,
  every_n_layers=..., offload=...)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T
from conftest import build
from safetensors.torch import load_file

import softprompt
from softprompt.model import PromptModel


STEPS = 8


class Rows(torch.utils.data.Dataset):
    """Four fixed token patterns, repeated: a causal LM learns them, a classifier tells them apart."""

    def __init__(self, count: int, classify: bool = False) -> None:
        patterns = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 9, 8, 7, 6, 5], [1, 20, 21, 22, 23, 24], [1, 24, 23, 22, 21, 20]])
        self.rows = [patterns[i % 4] for i in range(count)]
        self.classify = classify

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.rows[index]
        labels = torch.tensor(int(ids[1] >= 20)) if self.classify else ids.clone()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


CASES = {
    "gpt2-prefix-tuning": ("gpt2", lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=3, projection_hidden_size=16)),
    "bert-p-tuning-v2-head": ("bert", lambda: softprompt.PTuningV2Config(
        num_virtual_tokens=3, prefix_dropout=0.0, head="sequence-classification", num_labels=2, head_dropout=0.0)),
}


def prompt_model(case: str) -> PromptModel:
    family, config = CASES[case]
    model = build(family, seed=0)
    torch.manual_seed(1)
    return softprompt.attach(model, config())


def trainer(pm: PromptModel, case: str, out: Path, **overrides) -> T.Trainer:
    settings = dict(
        per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=STEPS, learning_rate=1e-2,
        save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=4, logging_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    settings.update(overrides)
    classify = case.startswith("bert")
    return T.Trainer(model=pm, args=T.TrainingArguments(str(out), **settings),
                     train_dataset=Rows(16, classify), eval_dataset=Rows(8, classify))


def task_weights(pm: PromptModel) -> dict[str, torch.Tensor]:
    return {f"tasks.{k}": v.detach().clone() for k, v in pm.tasks.state_dict().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_trains_and_saves_only_the_prompt(case, tmp_path):
    pm = prompt_model(case)
    base = {k: v.clone() for k, v in pm.base_model.state_dict().items()}
    before = task_weights(pm)
    trainer(pm, case, tmp_path).train()
    losses = [entry["loss"] for entry in trainer_history(tmp_path) if "loss" in entry]
    assert sum(losses[-2:]) < sum(losses[:2])
    assert all(torch.equal(v, base[k]) for k, v in pm.base_model.state_dict().items())
    after = task_weights(pm)
    assert all(not torch.equal(after[k], before[k]) for k in before)
    saved = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    assert set(saved) == set(after)  # the prompt (and head) only: no base weights, no tied-weight refusal


def trainer_history(out: Path) -> list[dict]:
    import json

    return json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_checkpoint_continues_exactly(case, tmp_path):
    pm = prompt_model(case)
    trainer(pm, case, tmp_path / "run").train()
    resumed = prompt_model(case)
    trainer(resumed, case, tmp_path / "again").train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    expected, got = task_weights(pm), task_weights(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    pm = prompt_model("gpt2-prefix-tuning")
    # "Best" is the highest eval loss here, so that the best checkpoint is not the last one.
    run = trainer(pm, "gpt2-prefix-tuning", tmp_path, max_steps=12, load_best_model_at_end=True,
                  metric_for_best_model="eval_loss", greater_is_better=True)
    run.train()
    evals = {e["step"]: e["eval_loss"] for e in run.state.log_history if "eval_loss" in e}
    best_step = max(evals, key=evals.get)
    assert best_step != 12, f"eval losses {evals}: the test needs a best checkpoint before the last"
    assert run.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    best = load_file(tmp_path / f"checkpoint-{best_step}" / "model.safetensors")
    last = load_file(tmp_path / "checkpoint-12" / "model.safetensors")
    weights = task_weights(pm)
    assert set(weights) == set(best)
    assert all(torch.equal(weights[k], best[k]) for k in best)
    assert any(not torch.equal(best[k], last[k]) for k in best)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_accumulation_gives_the_full_batch_step(case, tmp_path):
    """Plain SGD without clipping follows the loss scale: two accumulated half batches must equal one full batch."""
    once = dict(optim="sgd", learning_rate=0.5, max_grad_norm=0.0, max_steps=4, save_strategy="no", eval_strategy="no")
    full = prompt_model(case)
    trainer(full, case, tmp_path / "full", **once).train()
    halves = prompt_model(case)
    trainer(halves, case, tmp_path / "halves", **once, per_device_train_batch_size=2,
            gradient_accumulation_steps=2).train()
    expected, got = task_weights(full), task_weights(halves)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_the_loss_trainer_logs_is_the_models_loss(case, tmp_path):
    """On a batch of one repeated row the first logged loss is PromptModel's own loss before any step."""
    pm = prompt_model(case)
    run = trainer(pm, case, tmp_path, max_steps=1, save_strategy="no", eval_strategy="no",
                  per_device_train_batch_size=2, gradient_accumulation_steps=2)
    run.train_dataset.rows = [run.train_dataset.rows[0]] * 16
    row = run.train_dataset[0]
    pm.eval()
    with torch.no_grad():
        expected = pm(**{k: v[None] for k, v in row.items()}).loss.item()
    run.train()
    logged = next(entry["loss"] for entry in run.state.log_history if "loss" in entry)
    assert logged == pytest.approx(expected, rel=1e-4)


def test_activation_checkpointing_trains_the_same(tmp_path):
    plain = prompt_model("gpt2-prefix-tuning")
    trainer(plain, "gpt2-prefix-tuning", tmp_path / "plain", max_steps=4, save_strategy="no", eval_strategy="no").train()
    checkpointed = prompt_model("gpt2-prefix-tuning")
    trainer(checkpointed, "gpt2-prefix-tuning", tmp_path / "ckpt", max_steps=4, save_strategy="no", eval_strategy="no",
            activation_checkpointing=True).train()
    expected, got = task_weights(plain), task_weights(checkpointed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
