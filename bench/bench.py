"""Speed and memory of softprompt vs PEFT vs the bare frozen model, side by side, on the CPU or a GPU.

For a GPT-2-small-shaped and a BERT-base-shaped random model (built from configs in code) and for
SmolLM2-135M (real weights, Llama with grouped-query attention), at a short and a long input, and for
each prompt method -- prompt tuning, P-Tuning (LSTM encoder, soft tokens before the input as in
PEFT), prefix tuning (MLP reparameterization, width 512) and P-Tuning v2 (plain table) -- this
script measures

* a **training step**: forward + backward on the loss, gradients reaching the trainable prompt
  parameters (checked once after warmup), weights frozen;
* an **inference forward** under ``torch.no_grad()`` in eval mode (softprompt reuses the keys and
  values of soft tokens that open a causal decoder's input);
* the **peak memory of a training step** (resident set size above the one before the step, in a
  fresh process per cell, Linux ``/proc``);
* for softprompt, a **mixed-task batch** (4 tasks of the method, each row its own) against one task;

for softprompt, for PEFT, and for the bare frozen model. The bare model's training-step reference
is forward + backward with gradients flowing to the input embeddings (weights frozen): the least
any prompt method must pay. The bare model is also timed with ``T + P`` tokens so the inherent cost
of the extra tokens is visible.

Timing is done in *blocks*: each repetition visits every method in a shuffled order and, inside a
block, runs the bare model, softprompt and PEFT back to back (in shuffled order too). The ratios
reported are the medians over repetitions of the per-block ratios (library time / bare time in the
same block), which cancels most of the slow drift of a shared machine; absolute times are medians
over every measurement. The markdown table is printed and written to ``bench/RESULTS.md``.

Run::

    .venv/bin/python bench/bench.py --threads 1    # full run
    .venv/bin/python bench/bench.py --quick        # fewer repetitions and shapes, for a smoke test
    .venv/bin/python bench/bench.py --profile gpt2:prompt-tuning   # cProfile one softprompt training step
    .venv/bin/python bench/bench.py --device cuda --dtype bfloat16 --out bench/RESULTS-gpu-bf16.md

On a GPU the steps are timed with ``torch.cuda.synchronize`` around them, and the memory column is
the peak of ``torch.cuda.max_memory_allocated`` during a training step above the memory before it.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import gc
import io
import json
import platform
import pstats
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import peft
import transformers
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import softprompt

HERE = Path(__file__).resolve().parent
METHODS = ("prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2")
MODELS = ("gpt2", "bert", "smollm2")
LIBS = ("softprompt", "peft")
MIXED_TASKS = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Where models and inputs live, and their floating-point type: set once from --device / --dtype.
PLACE = {"device": torch.device("cpu"), "dtype": torch.float32}

Step = Callable[[], None]


# -- models ----------------------------------------------------------------------------------------
def build_model(family: str, seed: int = 0) -> nn.Module:
    """A frozen model in eval mode on PLACE's device and dtype: random GPT-2-small / BERT-base shapes, or SmolLM2's real weights."""
    torch.manual_seed(seed)
    if family == "gpt2":
        model: nn.Module = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=2048))
    elif family == "bert":
        config = BertConfig(
            num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
            vocab_size=30522, num_labels=2, max_position_embeddings=2048,
        )
        model = BertForSequenceClassification(config)
    elif family == "smollm2":
        from softprompt.models import load_model

        model, _ = load_model("smollm2")
    else:
        raise ValueError(family)
    model = model.to(device=PLACE["device"], dtype=PLACE["dtype"]).eval()
    model.requires_grad_(False)
    return model


def softprompt_config(method: str, tokens: int) -> softprompt.config.TaskConfig:
    if method == "prompt-tuning":
        return softprompt.PromptTuningConfig(num_virtual_tokens=tokens)
    if method == "p-tuning":
        return softprompt.PTuningConfig(num_virtual_tokens=tokens, encoder="lstm")
    if method == "prefix-tuning":
        return softprompt.PrefixTuningConfig(num_virtual_tokens=tokens, projection_hidden_size=512)
    if method == "p-tuning-v2":
        return softprompt.PTuningV2Config(num_virtual_tokens=tokens, prefix_dropout=0.0)
    raise ValueError(method)


def peft_config(method: str, tokens: int, task_type: str, hidden: int) -> peft.PeftConfig:
    if method == "prompt-tuning":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=tokens)
    if method == "p-tuning":
        return peft.PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=tokens, encoder_reparameterization_type="LSTM",
            encoder_hidden_size=hidden,
        )
    if method == "prefix-tuning":
        return peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=tokens, prefix_projection=True, encoder_hidden_size=512
        )
    if method == "p-tuning-v2":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=tokens, prefix_projection=False)
    raise ValueError(method)


# -- inputs and steps ------------------------------------------------------------------------------
@dataclass
class Inputs:
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) for an LM, (B,) for classification


def make_inputs(family: str, batch: int, length: int, vocab: int, seed: int = 1) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    if family == "bert":
        ids[:, 0] = 101  # [CLS]
        ids[:, -1] = 102  # [SEP]
        labels = torch.randint(0, 2, (batch,), generator=generator)
    else:
        labels = ids.clone()
    device = PLACE["device"]
    return Inputs(ids.to(device), torch.ones_like(ids).to(device), labels.to(device))


def clear_grads(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def bare_steps(model: nn.Module, inputs: Inputs, length: int) -> tuple[Step, Step]:
    """(train, infer) closures for the bare model on `length` tokens (the input, repeated if longer)."""
    ids = inputs.ids.repeat(1, -(-length // inputs.ids.shape[1]))[:, :length]  # (B, length)
    mask = torch.ones_like(ids)
    labels = ids if inputs.labels.dim() == 2 else inputs.labels
    embed = model.get_input_embeddings()

    def train() -> None:
        embeds = embed(ids).requires_grad_(True)  # weights frozen: the graph starts at the input
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        out.loss.backward()

    def infer() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    return train, infer


def prompt_steps(model: nn.Module, params: list[nn.Parameter], inputs: Inputs, **extra) -> tuple[Step, Step]:
    def train() -> None:
        clear_grads(params)
        out = model(input_ids=inputs.ids, attention_mask=inputs.mask, labels=inputs.labels, **extra)
        out.loss.backward()

    def infer() -> None:
        with torch.no_grad():
            model(input_ids=inputs.ids, attention_mask=inputs.mask, **extra)

    return train, infer


@dataclass
class Cell:
    """One (library, method) combination on one model: its steps or why it cannot run."""

    lib: str
    method: str
    train: Step | None = None
    infer: Step | None = None
    params: int = 0
    error: str | None = None
    memory: float | None = None  # MB above the resident set before a training step
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    train_ratios: list[float] = field(default_factory=list)
    infer_ratios: list[float] = field(default_factory=list)


def wrap(lib: str, method: str, family: str, model: nn.Module, tokens: int, tasks: int = 1) -> tuple[nn.Module, list]:
    if lib == "softprompt":
        pm = softprompt.attach(model, softprompt_config(method, tokens))
        for i in range(1, tasks):
            pm.add_task(f"task{i}", softprompt_config(method, tokens))
        return pm, pm.trainable_parameters()
    task_type = "SEQ_CLS" if family == "bert" else "CAUSAL_LM"
    wrapped = peft.get_peft_model(model, peft_config(method, tokens, task_type, model.config.hidden_size))
    return wrapped, [p for p in wrapped.parameters() if p.requires_grad]


def build_cell(lib: str, method: str, family: str, template: nn.Module, inputs: Inputs, tokens: int,
               mixed: bool = False) -> Cell:
    cell = Cell(lib, method + (f", {MIXED_TASKS} tasks mixed" if mixed else ""))
    try:
        wrapped, params = wrap(lib, method, family, copy.deepcopy(template), tokens, MIXED_TASKS if mixed else 1)
        wrapped.to(device=PLACE["device"], dtype=PLACE["dtype"]).eval()
        extra = {}
        if mixed:
            names = ["default"] + [f"task{i}" for i in range(1, MIXED_TASKS)]
            extra["task"] = [names[row % MIXED_TASKS] for row in range(inputs.ids.shape[0])]
        cell.params = sum(p.numel() for p in params)
        cell.train, cell.infer = prompt_steps(wrapped, params, inputs, **extra)
        cell.train()  # also the first warmup: fails here if the library cannot run this model
        missing = [i for i, p in enumerate(params) if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        if missing and not mixed:
            raise RuntimeError(f"{len(missing)} of {len(params)} trainable tensors got no gradient")
        cell.infer()
    except Exception as error:  # noqa: BLE001 -- a failing library is a result, recorded in the table
        cell.train = cell.infer = None
        cell.error = f"{type(error).__name__}: {error}"
    return cell


# -- peak memory -----------------------------------------------------------------------------------
def _rss_mb(field_name: str) -> float:
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def measure_memory(spec: dict) -> float:
    """In this (fresh) process: MB a training step adds at its peak (second step): resident memory on the
    CPU, allocated GPU memory on a GPU."""
    place(spec["device"], spec["dtype"])
    if PLACE["device"].type == "cpu":
        torch.set_num_threads(1)
    template = build_model(spec["family"])
    inputs = make_inputs(spec["family"], spec["batch"], spec["length"], template.config.vocab_size)
    if spec["lib"] == "bare":
        train, _ = bare_steps(template, inputs, spec["length"] + spec["extra"])
    else:
        model, params = wrap(spec["lib"], spec["method"], spec["family"], template, spec["tokens"])
        model.to(device=PLACE["device"], dtype=PLACE["dtype"]).eval()
        train, _ = prompt_steps(model, params, inputs)
    train()
    gc.collect()
    if PLACE["device"].type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    train()
    return _rss_mb("VmHWM") - before


def in_process_memory(spec: dict) -> float | None:
    gc.collect()
    torch.cuda.empty_cache()
    try:
        return measure_memory(spec)
    except Exception:  # noqa: BLE001 -- as a failed subprocess: no number for this cell
        return None


def memory_in_subprocess(spec: dict) -> float | None:
    done = subprocess.run([sys.executable, __file__, "--memory-cell", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


# -- timing ----------------------------------------------------------------------------------------
def small_op_latency() -> float:
    """Median seconds of a small (12, 138, 64) concatenation: ~10 us on an idle core; milliseconds when
    torch's worker threads must wait for cores that other jobs hold (then op count, not FLOPs, dominates)."""
    a, b = torch.randn(1, 12, 10, 64), torch.randn(1, 12, 128, 64)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        torch.cat([a, b], dim=2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def place(device: str, dtype: str) -> None:
    PLACE["device"], PLACE["dtype"] = torch.device(device), DTYPES[dtype]


def timed(step: Step) -> float:
    cuda = PLACE["device"].type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()  # kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter() - start


@dataclass
class ShapeResult:
    family: str
    length: int
    batch: int
    bare: Cell  # T tokens
    bare_long: Cell  # T + P tokens
    cells: dict[tuple[str, str], Cell]
    mixed: dict[str, Cell]  # softprompt, several tasks in one batch
    long_train_ratios: list[float] = field(default_factory=list)
    long_infer_ratios: list[float] = field(default_factory=list)
    mixed_train_ratios: dict[str, list[float]] = field(default_factory=dict)  # one task time / mixed time
    mixed_infer_ratios: dict[str, list[float]] = field(default_factory=dict)


def run_shape(family: str, length: int, batch: int, template: nn.Module, args: argparse.Namespace,
              rng: random.Random) -> ShapeResult:
    inputs = make_inputs(family, batch, length, template.config.vocab_size)
    bare = Cell("bare", f"{length} tokens")
    bare.train, bare.infer = bare_steps(template, inputs, length)
    bare_long = Cell("bare", f"{length + args.tokens} tokens")
    bare_long.train, bare_long.infer = bare_steps(template, inputs, length + args.tokens)
    cells: dict[tuple[str, str], Cell] = {}
    mixed: dict[str, Cell] = {}
    for method in args.methods:
        for lib in LIBS:
            cells[lib, method] = build_cell(lib, method, family, template, inputs, args.tokens)
            status = "ok" if cells[lib, method].error is None else cells[lib, method].error
            print(f"  built {family}/{length} {lib} {method}: {status}", flush=True)
        if batch >= MIXED_TASKS:
            mixed[method] = build_cell("softprompt", method, family, template, inputs, args.tokens, mixed=True)
    result = ShapeResult(family, length, batch, bare, bare_long, cells, mixed)

    # Blocks: one per method (bare, softprompt, PEFT, softprompt mixed) plus one for the extra tokens.
    blocks: list[tuple[str, list[Cell]]] = [("tokens", [bare, bare_long])]
    for method in args.methods:
        members = [bare] + [cells[lib, method] for lib in LIBS if cells[lib, method].train]
        if method in mixed and mixed[method].train:
            members.append(mixed[method])
        blocks.append((method, members))
    for rep in range(-args.warmup, args.reps):
        order = blocks[:]
        rng.shuffle(order)
        started = time.perf_counter()
        for name, members in order:
            for kind in ("train", "infer"):
                members = members[:]
                rng.shuffle(members)
                times = {id(c): timed(getattr(c, kind)) for c in members}
                if rep < 0:
                    continue  # warmup
                reference = times[id(bare)]
                for cell in members:
                    getattr(cell, f"{kind}_times").append(times[id(cell)])
                    if cell is bare:
                        continue
                    ratio = times[id(cell)] / reference
                    if cell is bare_long:
                        getattr(result, f"long_{kind}_ratios").append(ratio)
                    elif name in mixed and cell is mixed[name]:
                        single = times[id(cells["softprompt", name])]
                        getattr(result, f"mixed_{kind}_ratios").setdefault(name, []).append(single / times[id(cell)])
                    else:
                        getattr(cell, f"{kind}_ratios").append(ratio)
        label = "warmup" if rep < 0 else f"rep {rep + 1}/{args.reps}"
        print(f"  {family}/{length} {label}: {time.perf_counter() - started:.1f} s", flush=True)
    for cell in (bare, bare_long, *cells.values(), *mixed.values()):
        cell.train = cell.infer = None  # let the models go
    if args.memory:
        spec = {"family": family, "length": length, "batch": batch, "tokens": args.tokens, "device": args.device,
                "dtype": args.dtype}
        # A GPU's peak allocation resets per measurement, so one process serves; resident memory on the CPU does not.
        measure = in_process_memory if PLACE["device"].type == "cuda" else memory_in_subprocess
        bare.memory = measure({**spec, "lib": "bare", "method": "", "extra": 0})
        bare_long.memory = measure({**spec, "lib": "bare", "method": "", "extra": args.tokens})
        for (lib, method), cell in cells.items():
            if not cell.error:
                cell.memory = measure({**spec, "lib": lib, "method": method, "extra": 0})
        print(f"  {family}/{length} peak memory measured", flush=True)
    return result


# -- report ----------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (med(values), med(values))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def ratio_text(values: list[float]) -> str:
    if not values:
        return "–"
    low, high = quartiles(values)
    return f"{med(values):.3f} ({low:.2f}–{high:.2f})"


def ms(values: list[float]) -> str:
    return f"{1000 * med(values):.0f}" if values else "–"


def mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def verdicts(result: ShapeResult, method: str) -> str:
    """The issue's targets for the softprompt row of `method`, judged on the medians."""
    sp, pf = result.cells["softprompt", method], result.cells["peft", method]
    if sp.error:
        return "softprompt fails"
    train, infer = med(sp.train_ratios), med(sp.infer_ratios)
    marks = []
    if not pf.error:
        marks.append(("train ≤ PEFT", train <= med(pf.train_ratios)))
        if sp.memory is not None and pf.memory is not None:
            marks.append(("memory ≤ PEFT", sp.memory <= pf.memory))
    if method in ("prompt-tuning", "p-tuning"):
        marks.append(("train ≤ tokens + 1%", train <= med(result.long_train_ratios) * 1.01))
    else:
        marks.append(("train ≤ 1.02", train <= 1.02))
    marks.append(("infer ≤ 1.03", infer <= 1.03))
    mixed = result.mixed_infer_ratios.get(method)
    if mixed:
        marks.append(("mixed ≥ 0.95", med(mixed) >= 0.95))
    return ", ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in marks)


NAMES = {
    "gpt2": "GPT-2 small shape (GPT2LMHeadModel, random weights)",
    "bert": "BERT-base shape (BertForSequenceClassification, random weights)",
    "smollm2": "SmolLM2-135M (LlamaForCausalLM, real weights, grouped-query attention)",
}


def device_name() -> str:
    if PLACE["device"].type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(PLACE['device'])}"
    return "CPU"


def render(results: list[ShapeResult], args: argparse.Namespace, command: str, seconds: float,
           latency: tuple[float, float]) -> str:
    lines = [
        f"# softprompt vs PEFT vs the bare frozen model ({device_name()})",
        "",
        "Regenerated by `bench/bench.py`; do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"Python {platform.python_version()}",
        f"- device: {device_name()}; CPU: {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); the machine was shared with other jobs, so absolute "
        "times are noisy -- read the paired ratios",
        f"- small-op latency (median of a 0.4 MB `torch.cat`): {1e6 * latency[0]:.0f} us before the run, "
        f"{1e6 * latency[1]:.0f} us after (about 10 us on a free core)",
        f"- {args.tokens} virtual tokens, {args.dtype}, eval mode (no dropout), {args.warmup} warmup + {args.reps} "
        f"timed repetitions, total run {seconds:.0f} s",
        "",
        "**Measured.** *train*: one training step = forward + backward on the loss (decoders: LM loss on "
        "every token; BERT: sequence-classification loss), prompt parameters get gradients, weights frozen. "
        "For the bare model the step is forward + backward with gradients flowing to `inputs_embeds`: the "
        "least a prompt method must pay. *infer*: one forward under `torch.no_grad()` in eval mode; softprompt "
        "reuses the keys and values of soft tokens that open a causal decoder's input (computed once per "
        "prompt), PEFT recomputes them. Times are medians in ms; ratios are medians over repetitions of "
        "(time / bare time measured in the same block, back to back), with the interquartile range in "
        "parentheses; the bare reference is the model at T tokens. *memory*: MB of resident memory a training "
        "step adds at its peak over the memory before it (second step, fresh process per cell, 1 thread; on a GPU: "
        "allocated GPU memory). "
        f"*mixed*: softprompt with {MIXED_TASKS} tasks of the method in one batch, each row its own, as "
        "throughput relative to the same batch with one task (1 = no cost).",
        "",
        "**Method settings.** Prompt Tuning: soft tokens before the input. P-Tuning: LSTM prompt encoder, "
        "soft tokens before the input in both libraries (softprompt `PTuningConfig(num_virtual_tokens=P, "
        "encoder='lstm')`, PEFT `PromptEncoderConfig(encoder_reparameterization_type='LSTM')`). Prefix "
        "tuning: Linear-Tanh-Linear reparameterization of width 512. P-Tuning v2: plain key/value table. "
        "PEFT's BERT rows use task type SEQ_CLS (which also trains the classifier); softprompt keeps it frozen.",
        "",
        "**Targets** (softprompt rows): train ≤ PEFT; input-level methods within 1% of what the extra tokens "
        "cost (bare at T + P over bare at T), Prefix-Tuning and P-Tuning v2 ≤ 1.02; inference ≤ 1.03 × bare; "
        "peak training memory ≤ PEFT; mixed-task throughput ≥ 0.95 × one task.",
        "",
    ]
    timed_columns = not args.ratios_only

    def row(*cells: str, failed: bool = False) -> str:
        """A table row; --ratios-only drops the two columns of times (a failure's text stays)."""
        kept = list(cells)
        if not timed_columns:
            del kept[5], kept[4 if failed else 3]  # infer ms, then train ms (a failure: two empty cells)
        return "| " + " | ".join(kept) + " |"

    for result in results:
        lines += [
            f"## {NAMES[result.family]}: {result.length} tokens, batch {result.batch}",
            "",
            row("method", "library", "trainable params", "train ms", "train / bare", "infer ms", "infer / bare",
                "memory MB", "mixed train", "mixed infer", "targets"),
            row("---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"),
        ]
        b, bl = result.bare, result.bare_long
        lines.append(row(f"bare, {b.method}", "–", "0", ms(b.train_times), "1", ms(b.infer_times), "1", mb(b.memory),
                         "", "", ""))
        lines.append(row(f"bare, {bl.method}", "–", "0", ms(bl.train_times), ratio_text(result.long_train_ratios),
                         ms(bl.infer_times), ratio_text(result.long_infer_ratios), mb(bl.memory), "", "", ""))
        for method in args.methods:
            for lib in LIBS:
                cell = result.cells[lib, method]
                if cell.error:
                    error = cell.error.replace("|", "/").replace("\n", " ")[:160]
                    lines.append(row(method, lib, "–", f"**fails**: {error}", "", "", "", "", "", "", "", failed=True))
                    continue
                mixed_train = ratio_text(result.mixed_train_ratios.get(method, [])) if lib == "softprompt" else ""
                mixed_infer = ratio_text(result.mixed_infer_ratios.get(method, [])) if lib == "softprompt" else ""
                marks = verdicts(result, method) if lib == "softprompt" else ""
                lines.append(row(method, lib, f"{cell.params:,}", ms(cell.train_times), ratio_text(cell.train_ratios),
                                 ms(cell.infer_times), ratio_text(cell.infer_ratios), mb(cell.memory), mixed_train,
                                 mixed_infer, marks))
        lines.append("")
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------------------
def profile(spec: str, args: argparse.Namespace) -> None:
    """Profile one cell: cProfile of softprompt's Python (3 steps), then torch ops of bare, softprompt, PEFT."""
    family, method = spec.split(":")
    template = build_model(family)
    length = args.lengths[0]
    inputs = make_inputs(family, args.batch, length, template.config.vocab_size)
    cell = build_cell("softprompt", method, family, template, inputs, args.tokens)
    if cell.error:
        print(cell.error)
        return
    bare = Cell("bare", f"{length} tokens")
    bare.train, bare.infer = bare_steps(template, inputs, length)
    for kind in ("train", "infer"):
        step = getattr(cell, kind)
        step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3):
            step()
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("cumulative").print_stats(r"softprompt|transformers/(masking_utils|integrations/sdpa)", 25)
        stats.sort_stats("tottime").print_stats(20)
        print(f"=== cProfile: {family} {method} softprompt {kind} (3 steps) ===")
        print(stream.getvalue())
    other = build_cell("peft", method, family, template, inputs, args.tokens)
    contenders = [("bare", bare), ("softprompt", cell)] + ([] if other.error else [("peft", other)])
    for name, who in contenders:
        who.train()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                who.train()
        print(f"=== torch.profiler: {family} {method} {name} train (2 steps), top ops by self CPU time ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 warmup + 2 repetitions, short inputs only, no memory")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 4, quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warmup passes")
    parser.add_argument("--batch", type=int, default=4, help="rows per batch at the short length")
    parser.add_argument("--long-batch", type=int, default=1, help="rows per batch at the long length")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024], help="input tokens (short, long)")
    parser.add_argument("--tokens", type=int, default=20, help="virtual tokens")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="floating-point type of the models")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled block order")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--ratios-only", action="store_true", help="leave the absolute times out of the tables")
    parser.add_argument("--profile", metavar="MODEL:METHOD", help="cProfile one softprompt cell instead")
    parser.add_argument("--memory-cell", help=argparse.SUPPRESS)  # internal: one peak-memory measurement
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here (torch {torch.__version__})")
    if args.dtype == "float16" and not args.device.startswith("cuda"):
        parser.error("--dtype float16 needs --device cuda (CPU float16 kernels are not what anyone would run)")
    if args.reps is None:
        args.reps = 2 if args.quick else 4
    if args.quick:
        args.lengths, args.memory = args.lengths[:1], False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    if args.memory_cell:
        print(measure_memory(json.loads(args.memory_cell)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    place(args.device, args.dtype)
    if args.profile:
        profile(args.profile, args)
        return
    command = "python bench/bench.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    rng = random.Random(args.seed)
    latency_before = small_op_latency()
    started = time.perf_counter()
    results = []
    for family in args.models:
        print(f"{family}: building models", flush=True)
        template = build_model(family)
        for length in args.lengths:
            batch = args.batch if length == args.lengths[0] else args.long_batch
            results.append(run_shape(family, length, batch, template, args, rng))
            gc.collect()
        del template
    report = render(results, args, command, time.perf_counter() - started, (latency_before, small_op_latency()))
    args.out.write_text(report + "\n")
    print()
    print(report)


if __name__ == "__main__":
    main()
