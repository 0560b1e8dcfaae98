"""Training a prompt on a frozen model: the loop behind ``softprompt train``.

Minimizes the task loss L(theta_prompt) with the base model frozen: AdamW (or Adafactor), a
warmup followed by a linear or constant schedule, gradient accumulation and clipping, a dev
evaluation every N optimizer steps that keeps the best prompt and stops early after `patience`
evaluations without improvement. Batches are drawn in an order fixed by (seed, epoch), and a
checkpoint holds the optimizer, scheduler and RNG states, so ``resume=True`` finishes with the same
prompt, bit for bit, as a run that was never interrupted. The same code runs in one process or
under ``accelerate launch``: each global micro-batch of ``batch_size`` rows is split across the
processes, whose gradients are averaged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup
from transformers.optimization import Adafactor

from . import _run
from ._collate import Collator
from .checkpoint import load
from .config import CONFIGS, TaskConfig
from .data import Example, check_labels, label_set, read_examples
from .evaluate import PRIMARY, evaluate
from .model import PromptModel, attach
from .models import load_model

METHOD_OPTIONS = ("num_virtual_tokens", "init", "init_text", "template", "label_words", "projection_hidden_size",
                  "encoder", "placement", "head_dropout", "prefix_dropout")


class TrainError(ValueError):
    """Train arguments that cannot work together; the message says which and what to change."""


@dataclass
class TrainArgs:
    """Train a prompt on a frozen model and write a run folder."""

    method: Literal["prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"] = "p-tuning-v2"
    """Prompt method."""
    model: str = ""
    """Base model: a short name (minilm, smollm2) or a Hugging Face model folder."""
    data: str = ""
    """Training data file (jsonl, csv, tsv, CoNLL or E2E)."""
    out: str = ""
    """Run folder to write (checkpoint/, best/, prompt/, config.yaml, metrics.jsonl, curves.png)."""
    dev: str | None = None
    """Dev data file, scored every --eval-every steps to keep the best prompt."""
    task_type: Literal["classification", "token-classification", "generation"] = "classification"
    """What the data holds."""
    text_field: str = "text"
    """Input field(s) of jsonl/csv/tsv data; several as a comma-separated list."""
    label_field: str = "label"
    """Label field of classification data."""
    target_field: str = "target"
    """Target field of generation data."""
    format: str | None = None
    """Data format when the extension does not tell: jsonl, csv, tsv, conll, e2e."""
    encoding: str | None = None
    """Text encoding of the data files (default utf-8)."""
    columns: str | None = None
    """Column names of a CSV/TSV without a header row, comma-separated, e.g. text,label."""
    limit: int | None = None
    """Read at most this many training examples."""
    dev_limit: int | None = None
    """Score at most this many dev examples."""
    max_length: int = 128
    """Longest input in tokens."""
    separator: str = " => "
    """Text between source and target for generation with a causal LM."""
    max_new_tokens: int = 64
    """Tokens generated per dev example (generation)."""
    num_virtual_tokens: int | None = None
    """Number of soft tokens / prefix positions (method default when left out)."""
    init: str | None = None
    """Prompt-tuning initialization: random, vocab, text or labels."""
    init_text: str | None = None
    """Text to initialize the prompt from (prompt-tuning init=text, prefix-tuning word activations)."""
    template: str | None = None
    """P-Tuning template, e.g. '[P:3] {text} [P:3] It was [MASK]'."""
    label_words: str | dict[str, str] | None = None
    """Verbalizer 'label:word,label:word' (scored by the LM head instead of a fresh head)."""
    projection_hidden_size: int | None = None
    """Width of the prefix reparameterization MLP."""
    encoder: str | None = None
    """P-Tuning prompt encoder: lstm, mlp or none."""
    placement: str | None = None
    """Prompt-tuning placement: prefix, after_bos or suffix."""
    head_dropout: float | None = None
    """Dropout before the fresh head."""
    prefix_dropout: float | None = None
    """Dropout on prefix keys and values."""
    epochs: int = 3
    """Passes over the training data (unless --max-steps ends training first)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    batch_size: int = 16
    """Rows per micro-batch, summed over all processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 5e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """adamw, or adafactor (Lester et al.'s choice for prompt tuning)."""
    schedule: Literal["linear", "constant"] = "linear"
    """Learning rate after warmup: linear decay to 0, or constant."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (none: no clipping)."""
    eval_every: int = 100
    """Score the dev set every this many optimizer steps."""
    save_every: int | None = None
    """Write checkpoint/ every this many optimizer steps (default: --eval-every)."""
    log_every: int = 10
    """Log the training loss every this many optimizer steps."""
    patience: int | None = None
    """Stop after this many dev evaluations without improvement."""
    eval_batch_size: int = 64
    """Rows per batch when scoring the dev set."""
    seed: int = 42
    """Seed of the initialization, the data order and dropout."""
    precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision; fp16 needs a GPU."""
    resume: bool = False
    """Continue from OUT/checkpoint."""


def _label_words(value: str | dict[str, str] | None) -> dict[str, str] | None:
    if value is None or isinstance(value, dict):
        return value
    pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise TrainError(f"--label-words {value!r}: write label:word pairs, e.g. 'negative:terrible,positive:great'")
    return {label.strip(): word.strip() for label, word in pairs}


def build_config(args: TrainArgs, labels: list[str]) -> TaskConfig:
    """The method config of ``args``: method options, plus a head or label words for the task kind."""
    cls = CONFIGS[args.method]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {name: getattr(args, name) for name in METHOD_OPTIONS if getattr(args, name) is not None}
    wrong = sorted(set(given) - fields)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise TrainError(f"{flags} does not apply to --method {args.method}; drop it")
    words = _label_words(given.pop("label_words", None))
    if args.task_type != "classification" and (words or args.method == "p-tuning"):
        raise TrainError(f"--task-type {args.task_type} takes no label words or P-Tuning template; "
                         "use --method prompt-tuning, prefix-tuning or p-tuning-v2")
    if words:
        missing = sorted(set(labels) - set(words))
        if missing:
            raise TrainError(f"--label-words has no word for labels {missing} of the data")
        given.update(label_words=words, labels=list(words))
    elif args.task_type == "classification":
        given.update(head="sequence-classification", labels=labels)
    elif args.task_type == "token-classification":
        given.update(head="token-classification", labels=labels)
    return cls(**given)


def read_data(args: TrainArgs, path: str, limit: int | None) -> list[Example]:
    fields = [f.strip() for f in args.text_field.split(",")]
    return read_examples(path, args.task_type, text_field=fields if len(fields) > 1 else fields[0],
                         label_field=args.label_field, target_field=args.target_field,
                         format=args.format, encoding=args.encoding, limit=limit,
                         columns=[c.strip() for c in args.columns.split(",")] if args.columns else None)


def train(args: TrainArgs) -> dict[str, Any]:
    """Read the data files of ``args`` and train; see :func:`fit`."""
    missing = [f"--{name}" for name in ("model", "data", "out") if not getattr(args, name)]
    if missing:
        raise TrainError(f"train needs {', '.join(missing)}")
    train_examples = read_data(args, args.data, args.limit)
    dev_examples = read_data(args, args.dev, args.dev_limit) if args.dev else []
    return fit(args, train_examples, dev_examples)


def _micro_batches(size: int, batch: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """One epoch's micro-batches of example indices, in an order fixed by (seed, epoch)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    chunks = [order[i : i + batch] for i in range(0, size, batch)]
    return [c for c in chunks if len(c) >= world]  # every process needs a row


def fit(args: TrainArgs, train_examples: list[Example], dev_examples: list[Example]) -> dict[str, Any]:
    """Train on examples; returns a summary (best dev score, steps, parameters, run folder)."""
    run = Path(args.out)
    if args.precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("--precision fp16 needs a GPU (none here); use --precision bf16 or no")
    accelerator = Accelerator(mixed_precision=args.precision, cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.batch_size % world:
        raise TrainError(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    labels = label_set(train_examples) if args.task_type != "generation" else []
    if dev_examples and labels:
        check_labels(dev_examples, labels, args.dev or "dev")
    set_seed(args.seed)
    model, tokenizer = load_model(args.model)
    folder = _run.checkpoint_dir(run) if args.resume else None
    if args.resume and folder is None:
        raise TrainError(f"--resume: {run / _run.CHECKPOINT} holds no checkpoint; drop --resume to start afresh")
    pm: PromptModel = load(model, folder, tokenizer=tokenizer) if folder else attach(model, build_config(args, labels), tokenizer)
    config = pm.tasks["default"].config
    collator = Collator(pm, args.task_type, list(config.labels or labels), args.max_length, args.separator)
    params = pm.trainable_parameters()
    if args.optimizer == "adafactor":
        optimizer = Adafactor(params, lr=args.lr, weight_decay=args.weight_decay, scale_parameter=False,
                              relative_step=False, warmup_init=False)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = len(_micro_batches(len(train_examples), args.batch_size, args.seed, 0, world))
    total = args.max_steps or max(1, args.epochs * per_epoch // args.grad_accum)
    if args.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, total)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, args.warmup_steps)
    wrapped, optimizer = accelerator.prepare(pm, optimizer)
    state: dict[str, Any] = {"step": 0, "micro": 0, "best": -math.inf, "bad_evals": 0, "stopped": False}
    if folder is not None:
        saved = _run.load_state(folder)
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        _run.set_rng_state(saved.pop("rng"))
        state.update(saved)
    elif accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / _run.METRICS).unlink(missing_ok=True)
        model_path = Path(args.model).expanduser()
        values = dataclasses.asdict(args) | {"model": str(model_path.resolve()) if model_path.exists() else args.model}
        sizes = {"base_parameters": sum(p.numel() for p in pm.base_model.parameters()),
                 "trainable_parameters": pm.num_trainable_parameters()}
        _run.write_config(run, values | sizes | {"labels": collator.labels, "task_config": config.to_dict()})
    metric = PRIMARY[args.task_type]
    save_every = args.save_every or args.eval_every

    def checkpoint() -> None:
        if accelerator.is_main_process:
            full = state | {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _run.rng_state()}
            _run.save_checkpoint(run, pm, full)
        accelerator.wait_for_everyone()

    def dev_eval() -> None:
        scores, _ = evaluate(collator, dev_examples, args.eval_batch_size, args.max_new_tokens)
        if scores[metric] > state["best"]:
            state.update(best=scores[metric], bad_evals=0, best_step=state["step"])
            if accelerator.is_main_process:
                pm.export(run / _run.BEST)
        else:
            state["bad_evals"] += 1
        if accelerator.is_main_process:
            _run.log_event(run, {"event": "eval", "step": state["step"], **scores})
        if args.patience is not None and state["bad_evals"] >= args.patience:
            state["stopped"] = True

    bar = tqdm(total=total, initial=state["step"], disable=not accelerator.is_local_main_process, desc="train")
    window_loss, window_rows, window_start = 0.0, 0, time.perf_counter()
    wrapped.train()
    epoch = state["micro"] // max(per_epoch, 1)
    while state["step"] < total and not state["stopped"] and per_epoch:
        chunks = _micro_batches(len(train_examples), args.batch_size, args.seed, epoch, world)
        for index in range(state["micro"] - epoch * per_epoch, per_epoch):
            rows = chunks[index][rank::world]
            batch = {k: v.to(accelerator.device) for k, v in collator([train_examples[i] for i in rows]).items()}
            loss = wrapped(**batch).loss / args.grad_accum
            accelerator.backward(loss)
            window_loss += accelerator.reduce(loss.detach(), "mean").item()
            window_rows += len(chunks[index])
            state["micro"] += 1
            if state["micro"] % args.grad_accum:
                continue
            if args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            bar.update(1)
            if state["step"] % args.log_every == 0 or state["step"] == total:
                seconds = time.perf_counter() - window_start
                steps = args.log_every if state["step"] % args.log_every == 0 else (state["step"] % args.log_every)
                event = {"event": "train", "step": state["step"], "epoch": epoch, "loss": window_loss / steps,
                         "lr": scheduler.get_last_lr()[0], "examples_per_s": window_rows / max(seconds, 1e-9)}
                bar.set_postfix(loss=f"{event['loss']:.4f}", ex_s=f"{event['examples_per_s']:.1f}")
                if accelerator.is_main_process:
                    _run.log_event(run, event)
                window_loss, window_rows, window_start = 0.0, 0, time.perf_counter()
            if dev_examples and (state["step"] % args.eval_every == 0 or state["step"] == total):
                dev_eval()
            if state["step"] % save_every == 0 or state["step"] == total or state["stopped"]:
                checkpoint()
            if state["step"] >= total or state["stopped"]:
                break
        epoch += 1
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.is_main_process:
        pm.export(run / _run.PROMPT)
        _run.log_event(run, {"event": "end", "step": state["step"], "best_" + metric: state["best"]})
        _run.plot_curves(run, metric)
    accelerator.wait_for_everyone()
    return {"run": str(run), "metric": metric, "best": state["best"] if dev_examples else None,
            "best_step": state.get("best_step"), "steps": state["step"],
            "num_trainable_parameters": pm.num_trainable_parameters(), "labels": collator.labels}
