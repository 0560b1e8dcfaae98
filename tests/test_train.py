"""The training loop: reproducibility, gradient accumulation, resume after SIGKILL, data parallel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.train import TrainArgs, _micro_batches, train

import _tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {"bert": _tiny.bert(root / "bert"), "train": _tiny.sentiment(root / "train.jsonl"),
            "dev": _tiny.sentiment(root / "dev.jsonl", 16, seed=1), "root": root}


def _args(files: dict[str, Path], out: str, **overrides) -> TrainArgs:
    values = dict(method="p-tuning-v2", model=str(files["bert"]), data=str(files["train"]), out=str(files["root"] / out),
                  num_virtual_tokens=4, epochs=2, batch_size=8, lr=0.05, warmup_steps=2, log_every=4, eval_every=100,
                  dev_fraction=None if "dev" in overrides else 0)
    return TrainArgs(**(values | overrides))


def _prompt(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "prompt" / "prompts.safetensors")


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_data_order_is_fixed_by_seed_and_epoch() -> None:
    assert _micro_batches(10, 4, 1, 0, 1) == _micro_batches(10, 4, 1, 0, 1)
    assert _micro_batches(10, 4, 1, 0, 1) != _micro_batches(10, 4, 1, 1, 1)
    assert sorted(i for c in _micro_batches(10, 4, 1, 0, 1) for i in c) == list(range(10))
    assert [len(c) for c in _micro_batches(9, 4, 1, 0, 2)] == [4, 4]  # a 1-row tail cannot feed 2 processes


def test_same_seed_same_prompt(files: dict[str, Path]) -> None:
    # Dropout is on (P-Tuning v2 defaults: prefix and head dropout 0.1), so this also pins the RNG.
    train(_args(files, "seed_a", dev=str(files["dev"]), eval_every=4, epochs=1))
    train(_args(files, "seed_b", dev=str(files["dev"]), eval_every=4, epochs=1))
    train(_args(files, "seed_c", seed=7, epochs=1))
    a, b, c = _prompt(files["root"] / "seed_a"), _prompt(files["root"] / "seed_b"), _prompt(files["root"] / "seed_c")
    _assert_identical(a, b)
    assert not torch.equal(a["default.head.classifier.weight"], c["default.head.classifier.weight"])


def test_gradient_accumulation_matches_a_larger_batch(files: dict[str, Path]) -> None:
    # Without dropout, two micro-batches of 4 (loss / 2 each) give the gradient of one batch of 8:
    # the same rows in the same order, a mean of two equal-sized means. Only padding lengths and the
    # summation order differ, so the prompts agree to float32 rounding.
    quiet = dict(head_dropout=0.0, prefix_dropout=0.0)
    full = train(_args(files, "batch8", batch_size=8, epochs=1, **quiet))
    accumulated = train(_args(files, "accum", batch_size=4, grad_accum=2, epochs=1, **quiet))
    assert full["steps"] == accumulated["steps"] == 8
    a, b = _prompt(files["root"] / "batch8"), _prompt(files["root"] / "accum")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "softprompt.cli", "train", *args]


def _flags(files: dict[str, Path], out: Path) -> list[str]:
    return ["--method", "p-tuning-v2", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(out),
            "--dev", str(files["dev"]), "--num-virtual-tokens", "4", "--batch-size", "4", "--epochs", "40",
            "--max-steps", "150", "--lr", "0.02", "--warmup-steps", "5", "--eval-every", "10", "--save-every", "10",
            "--patience", "1000"]


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_prompt(files: dict[str, Path]) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    straight, killed = files["root"] / "straight", files["root"] / "killed"
    subprocess.run(_cli(*_flags(files, straight)), check=True, env=env, capture_output=True)
    process = subprocess.Popen(_cli(*_flags(files, killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    time.sleep(0.3)  # land somewhere between checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "prompt").exists(), "the run finished before the kill; make it longer"
    subprocess.run(_cli(*_flags(files, killed), "--resume"), check=True, env=env, capture_output=True)
    _assert_identical(_prompt(straight), _prompt(killed))
    _assert_identical(load_file(straight / "best/prompts.safetensors"), load_file(killed / "best/prompts.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(files: dict[str, Path]) -> None:
    # Each of 2 processes takes 4 of every 8 rows and DDP averages their gradients: the mean of two
    # equal-sized means is the mean over the 8 rows. Only float32 summation order differs (all-reduce
    # vs one sum, shorter padding), ~1e-7 relative per step, which Adam carries through 16 steps well
    # inside rtol 1e-4. Dropout is off: its masks are drawn per process.
    # torchrun, not `accelerate launch --cpu`, which starts one process only on a machine without GPUs.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    flags = ["--method", "p-tuning-v2", "--model", str(files["bert"]), "--data", str(files["train"]),
             "--num-virtual-tokens", "4", "--batch-size", "8", "--epochs", "2", "--lr", "0.05",
             "--head-dropout", "0", "--prefix-dropout", "0"]
    one, two = files["root"] / "one", files["root"] / "two"
    subprocess.run(_cli(*flags, "--out", str(one)), check=True, env=env, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "softprompt.cli",
              "train"]
    done = subprocess.run([*launch, *flags, "--out", str(two)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in (two / "checkpoint").glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    a, b = _prompt(one), _prompt(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# -- defaults --------------------------------------------------------------------------------------
def test_the_held_out_dev_rows_keep_the_class_shares() -> None:
    from softprompt.data import Example
    from softprompt.train import hold_out

    examples = [Example(text=f"row {i}", label=label) for i, label in enumerate(["5"] * 384 + ["1"] * 162 + ["3"] * 54)]
    train_rows, dev_rows = hold_out(examples, "classification", None, seed=0)
    counts = {label: sum(ex.label == label for ex in dev_rows) for label in ("5", "1", "3")}
    assert len(dev_rows) == 100 and len(train_rows) == 500  # a tenth, but at least 100 rows
    assert counts == {"5": 64, "1": 27, "3": 9}
    assert not {id(ex) for ex in dev_rows} & {id(ex) for ex in train_rows}
    assert hold_out(examples, "classification", None, seed=0)[1] == dev_rows  # fixed by the seed
    # A class too rare to share keeps its row for training; a fraction may be asked for.
    few = [Example(text=str(i), label="a") for i in range(9)] + [Example(text="z", label="b")]
    assert all(ex.label == "a" for ex in hold_out(few, "classification", 0.2, seed=0)[1])
    assert len(hold_out(examples, "classification", 0.5, seed=0)[1]) == 300


def test_the_default_length_of_a_run() -> None:
    from softprompt._train_args import resolve_defaults, total_steps

    def steps(per_epoch: int, **given) -> int:
        return total_steps(resolve_defaults(TrainArgs(**given)), per_epoch)

    assert steps(34) == 300  # 5 epochs of 34 batches: raised to the step floor
    assert steps(100) == 500  # 5 epochs
    assert steps(4000) == 1000  # a large data set: the ceiling (early stopping may end it sooner)
    assert steps(34, epochs=2) == 68  # --epochs is taken at its word
    assert steps(34, epochs=2, min_steps=100) == 100
    assert steps(34, max_steps=7) == 7
    for method in ("prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"):
        assert resolve_defaults(TrainArgs(method=method)).lr >= 1e-3  # prompts train far faster than fine-tuning


def test_balanced_class_weights_weigh_the_loss(files: dict[str, Path]) -> None:
    import torch.nn.functional as F

    from softprompt.data import Example
    from softprompt.train import Trainer, _class_weights

    rows = [Example(text="the movie was good", label="pos")] * 6 + [Example(text="the movie was bad", label="neg")] * 2
    weights = _class_weights(TrainArgs(class_weight="balanced"), rows, ["neg", "pos"])
    torch.testing.assert_close(weights, torch.tensor([8 / (2 * 2), 8 / (2 * 6)]))  # n / (classes * n_class)
    assert _class_weights(TrainArgs(), rows, ["neg", "pos"]) is None
    trainer = Trainer.setup(_args(files, "weighted", class_weight="balanced", head_dropout=0.0, prefix_dropout=0.0),
                            rows, rows)
    batch = trainer.collator(rows)
    logits = trainer.pm(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = F.cross_entropy(logits, batch["labels"], weight=trainer.class_weights)
    torch.testing.assert_close(trainer.loss(dict(batch)), expected)
    assert not torch.allclose(expected, F.cross_entropy(logits, batch["labels"]))


def test_the_readme_states_the_defaults_the_code_uses() -> None:
    from softprompt._train_args import DEFAULT_EPOCHS, MAX_DEFAULT_STEPS, METHOD_DEFAULTS, PATIENCE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--lr` |"))
    names = {"prompt-tuning": "Prompt Tuning", "p-tuning": "P-Tuning", "prefix-tuning": "Prefix-Tuning",
             "p-tuning-v2": "P-Tuning v2"}
    for method, defaults in METHOD_DEFAULTS.items():
        assert f"{names[method]} {defaults['lr']:.0e}".replace("e-0", "e-") in row, method
    floors = {defaults["min_steps"] for defaults in METHOD_DEFAULTS.values()}
    assert f"{DEFAULT_EPOCHS} epochs, at least {floors.pop()} and at most {MAX_DEFAULT_STEPS:,} optimizer steps" in readme
    assert not floors  # one floor for every method, as the README says
    assert f"stop after {PATIENCE} without improvement" in readme
