"""Training a prompt on a frozen model: the loop behind ``softprompt train``.

Minimizes the task loss L(theta_prompt) with the base model frozen: AdamW (or Adafactor), a
warmup followed by a linear or constant schedule, gradient accumulation and clipping, a dev
evaluation every N optimizer steps that keeps the best prompt and stops early after `patience`
evaluations without improvement. Without a dev file a stratified part of the training rows is held
out for that. Options (:class:`~softprompt._train_args.TrainArgs`) left unset take per-method
defaults, from the papers and checked on data (see the README). :class:`Trainer` holds one run: ``setup`` builds it (or
restores it from a checkpoint), ``step`` runs one micro-batch, ``evaluate`` scores the dev rows;
:func:`fit` composes them. Batches are drawn in an order fixed by (seed, epoch), and a checkpoint
holds the prompt and Accelerate's state (optimizer, scheduler, every process's RNG), so
``resume=True`` finishes with the same prompt, bit for bit, as a run that was never interrupted.
The same code runs in one process or several (``torchrun``, or ``accelerate launch`` on GPUs):
each global micro-batch of ``batch_size`` rows is split across the processes, whose gradients
are averaged.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup
from transformers.optimization import Adafactor

from . import _run, metrics
from ._collate import Collator
from ._train_args import (CHANGEABLE_ON_RESUME, EVALS_PER_RUN, FIXED_ON_RESUME, METHOD_DEFAULTS, PATIENCE, WARMUP_SHARE,
                          TrainArgs, build_config, field_docs, method_options, resolve_defaults, resolve_resume,
                          total_steps)
from .card import RunInfo
from .checkpoint import load
from .data import Example, label_set, read_examples
from .errors import TrainError
from .evaluate import PRIMARY, evaluate
from .model import PromptModel, attach
from .models import load_model

__all__ = ["CHANGEABLE_ON_RESUME", "FIXED_ON_RESUME", "METHOD_DEFAULTS", "TrainArgs", "TrainError", "Trainer",
           "build_config", "field_docs", "fit", "method_options", "read_data", "train"]

# -- data ----------------------------------------------------------------------------------------------
def read_data(args: TrainArgs, path: str, limit: int | None) -> list[Example]:
    """Examples of a data file, read with the field, format and column options of ``args``."""
    fields = [f.strip() for f in args.text_field.split(",")]
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    return read_examples(path, args.task_type, text_field=fields if len(fields) > 1 else fields[0],
                         label_field=args.label_field, target_field=args.target_field, format=args.format,
                         encoding=args.encoding, limit=limit, columns=columns, split=args.split, quoting=args.quoting)


def hold_out(examples: list[Example], task_type: str, fraction: float | None, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, dev): a share of `examples` set aside as dev rows, the same share of every class."""
    n = len(examples)
    wanted = round(n * fraction) if fraction is not None else min(1000, max(round(0.1 * n), min(100, n // 5)))
    if wanted < 1 or n - wanted < 1:
        raise TrainError(f"{n} training rows are too few to hold out dev rows; pass --dev FILE or --dev-fraction 0")
    rng = random.Random(seed)
    if task_type == "classification":
        by_label: dict[str, list[int]] = {}
        for index, ex in enumerate(examples):
            by_label.setdefault(str(ex.label), []).append(index)
        dev_index: list[int] = []
        for label in sorted(by_label):  # largest remainders, so the shares add up to `wanted`
            rng.shuffle(by_label[label])
        quotas = {label: wanted * len(rows) / n for label, rows in by_label.items()}
        counts = {label: int(q) for label, q in quotas.items()}
        for label in sorted(quotas, key=lambda k: counts[k] - quotas[k])[: wanted - sum(counts.values())]:
            counts[label] += 1
        for label, rows in sorted(by_label.items()):
            take = min(counts[label], len(rows) - 1)  # every class keeps a training row
            dev_index += rows[:take]
    else:
        order = list(range(n))
        rng.shuffle(order)
        dev_index = order[:wanted]
    chosen = set(dev_index)
    return [ex for i, ex in enumerate(examples) if i not in chosen], [examples[i] for i in sorted(chosen)]


def _micro_batches(size: int, batch: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """One epoch's micro-batches of example indices, in an order fixed by (seed, epoch)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    chunks = [order[i : i + batch] for i in range(0, size, batch)]
    return [c for c in chunks if len(c) >= world]  # every process needs a row


def say(message: str) -> None:
    """A notice for the person running the command (stderr, clear of the progress bar)."""
    tqdm.write(f"softprompt: {message}", file=sys.stderr)


# -- the trainer ---------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """One training run: its prompt, optimizer, data and counters. Build it with :meth:`setup`."""

    args: TrainArgs
    run: Path
    accelerator: Accelerator
    pm: PromptModel
    wrapped: torch.nn.Module
    optimizer: Any
    scheduler: Any
    collator: Collator
    train_examples: list[Example]
    dev_examples: list[Example]
    total: int
    per_epoch: int
    eval_every: int
    patience: int
    class_weights: torch.Tensor | None
    config_values: dict[str, Any]
    state: dict[str, Any] = field(default_factory=lambda: {"step": 0, "micro": 0, "best": None, "bad_evals": 0,
                                                           "best_step": None, "stopped": False, "best_scores": None,
                                                           "best_predicted": None, "window_loss": 0.0, "window_steps": 0})
    started: bool = False

    @property
    def metric(self) -> str:
        return PRIMARY[self.args.task_type]

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    # -- setup ------------------------------------------------------------------------------------
    @classmethod
    def setup(cls, args: TrainArgs, train_examples: list[Example], dev_examples: list[Example]) -> Trainer:
        """Check the arguments against the data (and the checkpoint), load the model, build or restore the state."""
        run = Path(args.out)
        if args.precision == "fp16" and not torch.cuda.is_available():
            raise TrainError("--precision fp16 needs a GPU (none here); use --precision bf16 or no")
        if not train_examples:
            raise TrainError("no training examples")
        accelerator = Accelerator(mixed_precision=args.precision, cpu=not torch.cuda.is_available())
        world = accelerator.num_processes
        if args.batch_size % world:
            raise TrainError(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
        _run.check_out(run, args.overwrite, args.resume)
        saved: dict[str, Any] | None = None
        if args.resume:
            if accelerator.is_main_process:
                for notice in _run.recover(run) if run.is_dir() else []:
                    say(notice)
            accelerator.wait_for_everyone()
            if _run.checkpoint_dir(run) is None:
                instead = "--overwrite instead of --resume" if _run.holds_run(run) else "without --resume"
                raise TrainError(f"--resume: {run / _run.CHECKPOINT} holds no checkpoint (the run stopped before its first); "
                                 f"train it again with {instead}")
            saved = _run.read_config(run)
            args, changed = resolve_resume(args, saved)
        labels = _labels(args, train_examples, saved)
        args = resolve_defaults(args)
        notices: list[str | None] = [changed] if saved is not None else []
        if not dev_examples and args.dev_fraction != 0:
            train_examples, dev_examples = hold_out(train_examples, args.task_type, args.dev_fraction, args.seed)
            n = len(train_examples) + len(dev_examples)
            notices.append(f"no --dev file: {len(dev_examples)} of the {n} training rows ({100 * len(dev_examples) / n:.0f} %"
                           f"{', stratified by label' if args.task_type == 'classification' else ''}) are held out as "
                           "dev rows to pick the best prompt and stop early")
        if dev_examples and labels:
            _check_known(dev_examples, labels, args.dev or "the held-out dev rows")

        folder = _run.checkpoint_dir(run) if args.resume else None
        if folder is not None:
            _run.check_training_state(folder, accelerator.process_index)
            _run.trainer_state(folder)
        task_config = build_config(args, labels) if folder is None else None
        set_seed(args.seed)
        model, tokenizer = load_model(args.model)
        if folder is not None:
            pm = load(model, folder, tokenizer=tokenizer)
        else:
            try:
                pm = attach(model, task_config, tokenizer)
            except ValueError as exc:  # a method option this model cannot take (layers, stacks, label words)
                raise TrainError(f"--method {args.method} on {args.model}: {exc}") from exc
        config = pm.tasks["default"].config
        collator = Collator(pm, args.task_type, list(config.labels or labels), args.max_length, args.separator)
        notices.append(collator.fit_positions())
        if accelerator.is_main_process:
            notices.append(collator.truncation_notice(train_examples, "training"))
            for notice in filter(None, notices):
                say(notice)

        params = pm.trainable_parameters()
        if args.optimizer == "adafactor":
            optimizer = Adafactor(params, lr=args.lr, weight_decay=args.weight_decay, scale_parameter=False,
                                  relative_step=False, warmup_init=False)
        else:
            optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        per_epoch = len(_micro_batches(len(train_examples), args.batch_size, args.seed, 0, world))
        if per_epoch == 0:
            raise TrainError(f"{len(train_examples)} training rows cannot feed {world} processes; add rows")
        total = total_steps(args, per_epoch)
        warmup = args.warmup_steps if args.warmup_steps is not None else round(WARMUP_SHARE * total)
        if args.schedule == "linear":
            scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
        wrapped, optimizer = accelerator.prepare(pm, optimizer)
        # The scheduler steps once per optimizer step in every process; accelerate.prepare would step it
        # once per process, so it is only registered for saving.
        accelerator.register_for_checkpointing(scheduler)
        # The frozen base model is not part of a checkpoint: the prompt is saved by PromptModel.save.
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())

        eval_every = args.eval_every or max(1, math.ceil(total / EVALS_PER_RUN))
        patience = PATIENCE if args.patience is None else args.patience
        class_weights = _class_weights(args, train_examples, collator.labels)
        model_path = Path(args.model).expanduser()
        values = dataclasses.asdict(args) | {"model": str(model_path.resolve()) if model_path.exists() else args.model}
        values |= {"base_parameters": sum(p.numel() for p in pm.base_model.parameters()),
                   "trainable_parameters": pm.num_trainable_parameters(), "labels": collator.labels,
                   "task_config": config.to_dict(), "steps": total, "warmup": warmup,
                   "input_length": collator.max_length}
        trainer = cls(args, run, accelerator, pm, wrapped, optimizer, scheduler, collator, train_examples, dev_examples,
                      total, per_epoch, eval_every, patience, class_weights, values)
        if folder is not None:
            accelerator.load_state(str(folder))
            state = _run.trainer_state(folder)
            trainer.state.update({k: v for k, v in state.items() if k in trainer.state})
            trainer.started = True
            if accelerator.is_main_process:
                _run.lock(run)
                _run.drop_events_after(run, trainer.state["step"])
                _run.write_config(run, values)
                say(f"resuming {run} from step {trainer.state['step']} of {total}")
        return trainer

    def start(self) -> None:
        """Before the run's first write: replace an old run (--overwrite) and write config.yaml."""
        if not self.started and self.main:
            _run.start(self.run, self.config_values)
        self.started = True

    # -- one micro-batch ----------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch; with class weights, cross-entropy over the logits."""
        if self.class_weights is None:
            return self.wrapped(**batch).loss
        labels = batch.pop("labels")
        out = self.wrapped(**batch)
        logits = out["label_logits"] if out.get("label_logits") is not None else out["logits"]
        weight = self.class_weights.to(logits.device)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), weight=weight,
                               ignore_index=-100)

    def step(self, rows: list[int]) -> tuple[float, bool]:
        """Forward and backward on this process's share of one micro-batch; an optimizer step once enough are accumulated.

        Returns (the micro-batch's loss averaged over processes, whether the optimizer stepped).
        """
        args = self.args
        device = self.accelerator.device
        batch = {k: v.to(device) for k, v in self.collator([self.train_examples[i] for i in rows]).items()}
        loss = self.loss(batch) / args.grad_accum
        self.accelerator.backward(loss)
        value = self.accelerator.reduce(loss.detach(), "mean").item()
        self.state["micro"] += 1
        if self.state["micro"] % args.grad_accum:
            return value, False
        if args.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.pm.trainable_parameters(), args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        return value, True

    # -- dev evaluation and saving ---------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Score the dev rows; keep the prompt (best/) when it is the best so far."""
        scores, predictions = evaluate(self.collator, self.dev_examples, self.args.eval_batch_size, self.args.max_new_tokens)
        self.start()
        if self.state["best"] is None or scores[self.metric] > self.state["best"]:
            predicted = dict(Counter(map(str, predictions))) if self.args.task_type == "classification" else None
            self.state.update(best=scores[self.metric], bad_evals=0, best_step=self.state["step"], best_scores=scores,
                              best_predicted=predicted)
            if self.main:
                self.pm.export(self.run / _run.BEST, run=self.run_info(scores))
        else:
            self.state["bad_evals"] += 1
        self.last_eval = (self.state["step"], scores)
        if self.main:
            _run.log_event(self.run, {"event": "eval", "step": self.state["step"], **scores})
        if self.patience and self.state["bad_evals"] >= self.patience:
            self.state["stopped"] = True
        return scores

    def save(self) -> None:
        self.start()
        _run.save_checkpoint(self.run, self.pm, self.accelerator, self.state)

    def log(self, loss: float, steps: int, rows: int, seconds: float, epoch: int, bar: tqdm) -> None:
        event = {"event": "train", "step": self.state["step"], "epoch": epoch, "loss": loss / steps,
                 "lr": self.scheduler.get_last_lr()[0], "examples_per_s": rows / max(seconds, 1e-9)}
        bar.set_postfix(loss=f"{event['loss']:.4f}", ex_s=f"{event['examples_per_s']:.1f}")
        self.start()
        if self.main:
            _run.log_event(self.run, event)

    # -- the loop ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        args, state = self.args, self.state
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        bar = tqdm(total=self.total, initial=state["step"], desc="train",
                   disable=None if self.accelerator.is_local_main_process else True)  # None: off when not a terminal
        # The logged loss is the mean over the steps since the last log line; the sum and count travel in the
        # checkpoint, so a resumed run logs what the uninterrupted run would have.
        window_rows, window_start = 0, time.perf_counter()
        self.wrapped.train()
        epoch = state["micro"] // self.per_epoch
        try:
            while state["step"] < self.total and not state["stopped"]:
                chunks = _micro_batches(len(self.train_examples), args.batch_size, args.seed, epoch, world)
                for index in range(state["micro"] - epoch * self.per_epoch, self.per_epoch):
                    loss, stepped = self.step(chunks[index][rank::world])
                    state["window_loss"] += loss
                    window_rows += len(chunks[index])
                    if not stepped:
                        continue
                    state["window_steps"] += 1
                    bar.update(1)
                    step = state["step"]
                    if step % args.log_every == 0 or step == self.total:
                        self.log(state["window_loss"], state["window_steps"], window_rows, time.perf_counter() - window_start,
                                 epoch, bar)
                        state.update(window_loss=0.0, window_steps=0)
                        window_rows, window_start = 0, time.perf_counter()
                    if self.dev_examples and (step % self.eval_every == 0 or step == self.total):
                        self.evaluate()
                    if step % (args.save_every or self.eval_every) == 0 or step == self.total or state["stopped"]:
                        self.save()
                    if step >= self.total or state["stopped"]:
                        break
                epoch += 1
        except BaseException:
            if self.main and self.started:
                _run.unlock(self.run)
            raise
        finally:
            bar.close()  # before any message about an interruption
        return self.finish()

    def run_info(self, scores: dict[str, float] | None) -> RunInfo:
        """What an export's model card says about this run: its data, rows and steps, and the prompt's dev scores."""
        metrics = {f"dev {name}": value for name, value in (scores or {}).items() if isinstance(value, (int, float))}
        return RunInfo(data=self.args.data or None, examples=len(self.train_examples), steps=self.state["step"],
                       metrics=metrics)

    def finish(self) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        self.start()
        if self.main:
            step, scores = getattr(self, "last_eval", (None, None))  # the final prompt's scores, if it was evaluated
            scores = scores if step == self.state["step"] else None
            self.pm.export(self.run / _run.PROMPT, run=self.run_info(scores))
            _run.log_event(self.run, {"event": "end", "step": self.state["step"], "best_" + self.metric: self.state["best"],
                                      "best_step": self.state["best_step"]})
            _run.plot_curves(self.run, self.metric)
            _run.unlock(self.run)
        self.accelerator.wait_for_everyone()
        summary: dict[str, Any] = {
            "run": str(self.run), "metric": self.metric, "best": self.state["best"], "best_step": self.state["best_step"],
            "steps": self.state["step"], "stopped_early": self.state["stopped"],
            "num_trainable_parameters": self.pm.num_trainable_parameters(), "labels": self.collator.labels,
            "train_examples": len(self.train_examples), "dev_examples": len(self.dev_examples),
        }
        if self.dev_examples and self.args.task_type == "classification" and self.state["best_scores"]:
            summary |= verdict(self.state["best_scores"], self.state["best_predicted"], self.train_examples, self.dev_examples)
        return summary


def verdict(scores: dict[str, float], predicted: dict[str, int] | None, train_examples: list[Example],
            dev_examples: list[Example]) -> dict[str, Any]:
    """Dev scores of the best prompt beside the majority-class baseline, with warnings in plain words."""
    majority = Counter(str(ex.label) for ex in train_examples).most_common(1)[0][0]
    golds = [str(ex.label) for ex in dev_examples]
    baseline = metrics.compute("classification", [majority] * len(golds), golds)
    warnings = []
    predicted = predicted or {}
    if len(predicted) == 1:
        warnings.append(f"the best prompt predicts one class ('{next(iter(predicted))}') for every dev row: it has "
                        "learned nothing useful; train longer (--min-steps), raise --lr or try --class-weight balanced")
    elif scores["accuracy"] <= baseline["accuracy"] or scores["macro_f1"] <= baseline["macro_f1"]:
        warnings.append(f"dev accuracy {scores['accuracy']:.3f} / macro-F1 {scores['macro_f1']:.3f} does not beat "
                        f"always answering '{majority}' ({baseline['accuracy']:.3f} / {baseline['macro_f1']:.3f}); "
                        "the prompt has not learned the task")
    return {"dev_accuracy": scores["accuracy"], "dev_macro_f1": scores["macro_f1"],
            "majority_class": majority, "majority_accuracy": baseline["accuracy"],
            "majority_macro_f1": baseline["macro_f1"], "dev_predictions": dict(predicted), "warnings": warnings}


def _labels(args: TrainArgs, examples: list[Example], saved: dict[str, Any] | None) -> list[str]:
    if args.task_type == "generation":
        return []
    found = label_set(examples)
    if saved is not None and saved.get("labels"):
        _check_known(examples, list(saved["labels"]), args.data or "the training data")
        return list(saved["labels"])
    if len(found) < 2:
        what = "tag" if args.task_type == "token-classification" else "label"
        raise TrainError(f"{args.data or 'the training data'}: every row has the {what} {found[0]!r} if any; a classifier "
                         f"needs at least two classes (check --label-field)" if found else
                         f"{args.data or 'the training data'}: no labels found")
    return found


def _check_known(examples: list[Example], labels: list[str], where: str) -> None:
    known = set(labels)
    unknown = sorted({value for ex in examples for value in (ex.tags if ex.tags is not None else [ex.label])
                      if value is not None and value not in known})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise TrainError(f"{where} has labels the run does not know: {shown}; the run knows {labels}. "
                         "Fix the labels, or train a new run on data that holds them")


def _class_weights(args: TrainArgs, examples: list[Example], labels: list[str]) -> torch.Tensor | None:
    if args.class_weight == "none" or args.task_type == "generation":
        return None
    counts = Counter(tag for ex in examples for tag in (ex.tags if ex.tags is not None else [str(ex.label)]))
    total = sum(counts.values())
    # n / (C * n_c): a class of average frequency weighs 1 (scikit-learn's "balanced").
    return torch.tensor([total / (len(labels) * max(counts.get(label, 0), 1)) for label in labels], dtype=torch.float32)


# -- entry points -------------------------------------------------------------------------------------
def fit(args: TrainArgs, train_examples: list[Example], dev_examples: list[Example]) -> dict[str, Any]:
    """Train on examples; returns a summary (best dev score, steps, parameters, run folder, the verdict on the dev rows)."""
    return Trainer.setup(args, train_examples, dev_examples).train()


def train(args: TrainArgs) -> dict[str, Any]:
    """Read the data files of ``args`` and train; see :func:`fit`."""
    missing = [f"--{name}" for name in ("model", "out") if not getattr(args, name)]
    if not args.data and not args.resume:
        missing.insert(1, "--data")
    if missing:
        raise TrainError(f"train needs {', '.join(missing)}")
    _run.check_out(Path(args.out), args.overwrite, args.resume)
    data = args.data
    if args.resume and not data:
        data = _run.read_config(Path(args.out)).get("data", "")
    train_examples = read_data(args, data, args.limit)
    dev_examples = read_data(args, args.dev, args.dev_limit) if args.dev else []
    return fit(args, train_examples, dev_examples)
