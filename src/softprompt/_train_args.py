"""The options of ``softprompt train`` and their defaults: :class:`TrainArgs`.

The prompt-method options are not declared here: :data:`MethodOptions` is made from the fields of
the four method config dataclasses (their types, with None meaning "the method's default", and
their docstrings as help), so the configs are the one place an option is declared. The trainer's
own options follow, documented one by one, with per-method defaults in :data:`METHOD_DEFAULTS`
for those left unset. On ``--resume`` the checkpoint's settings stand: :func:`resolve_resume`
refuses the ones that cannot change and reports the ones that do.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import CONFIGS, TaskConfig
from .errors import TrainError

# -- method options: declared once, in the config dataclasses -------------------------------------
_FROM_DATA = ("head", "num_labels", "labels")  # set from the data and --task-type, not by hand
_CLI_TYPES: dict[str, Any] = {"label_words": str | dict[str, str] | None}  # also 'label:word,label:word'


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases: the string literal under each field."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # made at run time: no source
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def method_options() -> dict[str, tuple[Any, str]]:
    """Every option of the four method configs: name -> (type accepting None, help naming each method's default)."""
    hints: dict[str, Any] = {}
    docs: dict[str, dict[str, list[str]]] = {}  # option -> its doc -> the methods that document it so
    defaults: dict[str, list[str]] = {}
    for method, cls in CONFIGS.items():
        types, texts = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in _FROM_DATA:
                continue
            hints.setdefault(f.name, _CLI_TYPES.get(f.name, types[f.name] | None))
            docs.setdefault(f.name, {}).setdefault(texts.get(f.name, ""), []).append(method)
            if f.default is not dataclasses.MISSING and f.default is not None:
                defaults.setdefault(f.name, []).append(f"{method} {f.default}")
    out = {}
    for name, hint in hints.items():
        texts = docs[name]
        used = [m for methods in texts.values() for m in methods]
        if len(texts) == 1:
            doc = next(iter(texts)) + ("" if len(used) == len(CONFIGS) else f" Methods: {', '.join(used)}.")
        else:
            doc = " ".join(f"{', '.join(methods)}: {text}" for text, methods in texts.items() if text)
        shown = f" Default: {'; '.join(defaults[name])}." if defaults.get(name) else ""
        out[name] = (hint, doc + shown)
    return out


MethodOptions = dataclasses.make_dataclass(
    "MethodOptions", [(name, hint, field(default=None)) for name, (hint, _) in method_options().items()])
MethodOptions.__doc__ = "The prompt-method options, one per field of the method configs (None: the method's default)."
MethodOptions.__module__ = __name__

# -- per-method training defaults ------------------------------------------------------------------
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # Lester et al. 2021 train prompts at lr 0.3 (Adafactor); with AdamW and the fresh linear head that
    # MiniLM needs, 3e-2 is the rate that learned on SST-2 and the reviews (README, "Defaults").
    "prompt-tuning": {"lr": 3e-2, "min_steps": 300},
    # Liu et al. 2021 tune the LSTM prompt encoder at 1e-5 with the LM; with the LM frozen, the sweeps of
    # reports/quality.md chose 3e-3 (SST-2) and 1e-2 (RTE) of 1e-3, 3e-3, 1e-2 on SmolLM2.
    "p-tuning": {"lr": 3e-3, "min_steps": 300},
    # Li & Liang 2021: 5e-5..8e-5 on GPT-2 Medium for 5-10 epochs; 1e-3 learned E2E on SmolLM2 (reports/quality.md).
    "prefix-tuning": {"lr": 1e-3, "min_steps": 300},
    # Liu et al. 2022: lr 5e-3..1e-2 (sequence classification), P = 16 (classification < 20).
    "p-tuning-v2": {"lr": 1e-2, "min_steps": 300},
}
DEFAULT_EPOCHS = 5
"""Passes over the training rows, within [min_steps, MAX_DEFAULT_STEPS] optimizer steps."""
MAX_DEFAULT_STEPS = 1000
"""Ceiling on the default length of a run (neither --epochs nor --max-steps given): large data sets stop here."""
WARMUP_SHARE = 0.06
"""Share of the optimizer steps that warm up linearly (RoBERTa's and P-Tuning v2's GLUE runs use 6 %)."""
EVALS_PER_RUN = 10
"""Dev evaluations in a run when --eval-every is left out."""
PATIENCE = 4
"""Evaluations without improvement before stopping when --patience is left out and dev rows exist."""


@dataclass
class TrainArgs(MethodOptions):  # type: ignore[valid-type, misc]
    """Train a prompt on a frozen model and write a run folder."""

    method: Literal["prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"] = "p-tuning-v2"
    """Prompt method."""
    model: str = ""
    """Base model: a short name (minilm, smollm2) or a Hugging Face model folder."""
    data: str = ""
    """Training data file."""
    out: str = ""
    """Run folder to write (checkpoint/, best/, prompt/, config.yaml, metrics.jsonl, curves.png)."""
    dev: str | None = None
    """Dev data file, scored every --eval-every steps to keep the best prompt (default: held out from --data)."""
    dev_fraction: float | None = None
    """Share of --data held out as dev rows (stratified by label) when there is no --dev; 0 trains on every row and keeps the last prompt. Default: 10 %, at least 100 rows but at most a fifth, at most 1,000."""
    split: str | None = None
    """Split to read from a data folder that holds several (e.g. a `datasets` save_to_disk folder)."""
    task_type: Literal["classification", "token-classification", "generation"] = "classification"
    """What the data holds."""
    text_field: str = "text"
    """Input field(s) of table or JSON data; several as a comma-separated list."""
    label_field: str = "label"
    """Label field of classification data."""
    target_field: str = "target"
    """Target field of generation data."""
    format: str | None = None
    """Data format when the file name does not tell (e.g. jsonl, csv, tsv, conll, e2e)."""
    encoding: str | None = None
    """Text encoding of the data files (default utf-8)."""
    columns: str | None = None
    """Column names of a CSV/TSV without a header row, comma-separated, e.g. text,label."""
    quoting: Literal["auto", "rfc4180", "none"] = "auto"
    """How a CSV/TSV file's quotes are read: told from the file (auto), as quoting (rfc4180), or as text (none)."""
    limit: int | None = None
    """Read at most this many training examples."""
    dev_limit: int | None = None
    """Score at most this many dev examples."""
    max_length: int = 128
    """Longest input in tokens; longer inputs are cut (P-Tuning keeps the template's anchors and [MASK]) and the count is reported. Capped so that input and prompt fit the model's positions."""
    separator: str = " => "
    """Text between source and target for generation with a causal LM."""
    max_new_tokens: int = 64
    """Tokens generated per dev example (generation)."""
    epochs: int | None = None
    """Passes over the training data (default: 5, within 300 to 1,000 optimizer steps)."""
    min_steps: int | None = None
    """Floor on optimizer steps when --max-steps is left out (default, when --epochs is left out too: 300)."""
    max_steps: int | None = None
    """Train exactly this many optimizer steps (overrides --epochs and --min-steps)."""
    batch_size: int = 16
    """Rows per micro-batch, summed over all processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """Peak learning rate (default per method: prompt-tuning 3e-2, p-tuning 3e-3, prefix-tuning 1e-3, p-tuning-v2 1e-2)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """adamw, or adafactor (Lester et al.'s choice for prompt tuning)."""
    schedule: Literal["linear", "constant"] = "linear"
    """Learning rate after warmup: linear decay to 0, or constant."""
    warmup_steps: int | None = None
    """Optimizer steps of linear warmup (default: 6 % of the steps)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (none: no clipping)."""
    class_weight: Literal["none", "balanced"] = "none"
    """Loss weights per class: none, or balanced (rare classes count as much as common ones in the loss)."""
    eval_every: int | None = None
    """Score the dev set every this many optimizer steps (default: 10 times per run)."""
    save_every: int | None = None
    """Write checkpoint/ every this many optimizer steps (default: --eval-every)."""
    log_every: int = 10
    """Log the training loss every this many optimizer steps."""
    patience: int | None = None
    """Stop after this many dev evaluations without improvement (default: 4; 0 never stops early)."""
    eval_batch_size: int = 64
    """Rows per batch when scoring the dev set."""
    seed: int = 42
    """Seed of the initialization, the dev hold-out, the data order and dropout."""
    precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision; fp16 needs a GPU."""
    resume: bool = False
    """Continue the run in --out from its checkpoint."""
    overwrite: bool = False
    """Replace the run in --out (its files go once the new run writes its first)."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "log_every", "eval_every", "save_every", "epochs", "max_steps",
                    "min_steps", "max_length", "max_new_tokens", "eval_batch_size", "limit", "dev_limit",
                    "num_virtual_tokens")
        for name in positive:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TrainError(f"--{name.replace('_', '-')} {value}: give a whole number of at least 1")
        for name in ("lr", "weight_decay", "max_grad_norm", "patience", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0 or (name == "lr" and value == 0)):
                raise TrainError(f"--{name.replace('_', '-')} {value}: give a {'positive' if name == 'lr' else 'non-negative'} number")
        if self.dev_fraction is not None and not 0 <= self.dev_fraction < 1:
            raise TrainError(f"--dev-fraction {self.dev_fraction}: give a share from 0 (no hold-out) to below 1")
        if self.resume and self.overwrite:
            raise TrainError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        if self.dev and self.dev_fraction:
            raise TrainError("--dev-fraction holds out rows of --data when there is no --dev; drop one of them")

    def method_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in method_options() if getattr(self, name) is not None}


# Settings a resumed run takes from its checkpoint; giving another value is an error.
FIXED_ON_RESUME = ("method", "model", "task_type", "batch_size", "grad_accum", "lr", "weight_decay", "optimizer",
                   "schedule", "warmup_steps", "max_grad_norm", "class_weight", "seed", "max_length", "separator",
                   "precision", "dev_fraction", *method_options())
# Settings that may change on resume; a change applies from the checkpoint on and is reported.
CHANGEABLE_ON_RESUME = ("epochs", "min_steps", "max_steps", "eval_every", "save_every", "log_every", "patience",
                        "eval_batch_size", "max_new_tokens", "data", "dev", "limit", "dev_limit", "split", "format",
                        "encoding", "columns", "quoting", "text_field", "label_field", "target_field")


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
    given = args.method_values()
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


def total_steps(args: TrainArgs, per_epoch: int) -> int:
    if args.max_steps is not None:
        return args.max_steps
    if args.epochs is not None:
        return max(1, args.epochs * per_epoch // args.grad_accum, args.min_steps or 0)
    steps = min(DEFAULT_EPOCHS * per_epoch // args.grad_accum, MAX_DEFAULT_STEPS)
    return max(1, steps, args.min_steps or 0)


def resolve_defaults(args: TrainArgs) -> TrainArgs:
    """Fill the per-method defaults of options left unset."""
    defaults = METHOD_DEFAULTS[args.method]
    # The step floor is part of the default length of a run: --epochs given alone is taken at its word.
    floor = defaults["min_steps"] if args.epochs is None else None
    return dataclasses.replace(args, lr=args.lr if args.lr is not None else defaults["lr"],
                               min_steps=args.min_steps if args.min_steps is not None else floor)


def resolve_resume(args: TrainArgs, saved: dict[str, Any]) -> tuple[TrainArgs, str | None]:
    """The checkpoint's settings, with changes only where a resumed run may take them (and a notice naming those)."""
    values = dataclasses.asdict(args)
    conflicts = []
    for name in FIXED_ON_RESUME:
        old, new = saved.get(name), values[name]
        if name == "model" and new and Path(new).expanduser().exists():
            new = str(Path(new).expanduser().resolve())
        if new is not None and new != old:
            conflicts.append(f"--{name.replace('_', '-')} {new} (the checkpoint has {old})")
    if conflicts:
        raise TrainError("--resume continues with the checkpoint's settings, but these differ: " + "; ".join(conflicts)
                         + ". Drop them, or train a new run with --overwrite or another --out")
    changed = [f"--{n.replace('_', '-')} {values[n]} (was {saved.get(n)})" for n in CHANGEABLE_ON_RESUME
               if values[n] is not None and n in saved and values[n] != saved.get(n)]
    notice = "resuming with changed settings, applied from the checkpoint on: " + "; ".join(changed) if changed else None
    merged = {k: saved[k] for k in FIXED_ON_RESUME if k in saved} | {k: values[k] for k in CHANGEABLE_ON_RESUME if values[k] is not None}
    known = {f.name for f in dataclasses.fields(TrainArgs)}
    resolved = TrainArgs(**({k: v for k, v in values.items() if k in known} | {k: v for k, v in merged.items() if k in known}))
    return resolved, notice
