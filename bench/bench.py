"""Speed of softprompt vs PEFT vs the bare frozen model, side by side, on the CPU.

For a GPT-2-small-shaped and a BERT-base-shaped random model (built from configs in code, float32,
eval mode so no dropout runs anywhere) and for each prompt method -- prompt tuning, P-Tuning
(LSTM encoder), prefix tuning (MLP reparameterization, width 512) and P-Tuning v2 (plain table) --
this script times

* a **training step**: forward + backward on the loss, gradients reaching the trainable prompt
  parameters (checked once after warmup), weights frozen;
* an **inference forward** under ``torch.no_grad()``;

for softprompt, for PEFT, and for the bare frozen model. The bare model's training-step reference
is forward + backward with gradients flowing to the input embeddings (``inputs_embeds`` requires
grad, weights frozen): the least any prompt method must pay. The bare model is also timed with
``T + P`` tokens so the inherent cost of the extra tokens is visible.

Timing is done in *blocks*: each repetition visits every method in a shuffled order and, inside a
block, runs the bare model, softprompt and PEFT back to back (in shuffled order too). The ratios
reported are the medians over repetitions of the per-block ratios (library time / bare time in the
same block), which cancels most of the slow drift of a shared machine; absolute times are medians
over every measurement. The markdown table is printed and written to ``bench/RESULTS.md``.

Run::

    . .venv/bin/activate
    python bench/bench.py            # full run (a few minutes on 2 cores)
    python bench/bench.py --quick    # fewer repetitions, for a smoke test
    python bench/bench.py --profile gpt2:prompt-tuning   # cProfile one softprompt training step
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import gc
import io
import platform
import pstats
import random
import statistics
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
LIBS = ("softprompt", "peft")
TRAIN_TARGET = 1.10  # softprompt training step within 10% of the bare forward + backward

Step = Callable[[], None]


# -- models ----------------------------------------------------------------------------------------
def build_model(family: str, seed: int = 0) -> nn.Module:
    """A random float32 model of the given shape, frozen, in eval mode."""
    torch.manual_seed(seed)
    if family == "gpt2":
        model: nn.Module = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257))
    elif family == "bert":
        config = BertConfig(
            num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
            vocab_size=30522, num_labels=2,
        )
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(family)
    model = model.float().eval()
    model.requires_grad_(False)
    return model


def softprompt_config(method: str, tokens: int) -> softprompt.config.TaskConfig:
    half = tokens // 2
    if method == "prompt-tuning":
        return softprompt.PromptTuningConfig(num_virtual_tokens=tokens)
    if method == "p-tuning":
        return softprompt.PTuningConfig(template=f"[P:{half}] {{text}} [P:{tokens - half}]", encoder="lstm")
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
    labels: torch.Tensor  # (B, T) for the LM, (B,) for classification
    slot_ids: torch.Tensor  # (B, T + P): P-Tuning template slots -1..-P/2, the text, then the rest
    slot_labels: torch.Tensor  # labels matching slot_ids


def make_inputs(family: str, batch: int, length: int, tokens: int, vocab: int, seed: int = 1) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    if family == "bert":
        ids[:, 0] = 101  # [CLS]
        ids[:, -1] = 102  # [SEP]
    mask = torch.ones_like(ids)
    half = tokens // 2
    before = -torch.arange(1, half + 1).expand(batch, -1)
    after = -torch.arange(half + 1, tokens + 1).expand(batch, -1)
    slot_ids = torch.cat([before, ids, after], dim=1)
    if family == "gpt2":
        labels = ids.clone()
        slot_labels = slot_ids.masked_fill(slot_ids < 0, -100)
    else:
        labels = torch.randint(0, 2, (batch,), generator=generator)
        slot_labels = labels
    return Inputs(ids, mask, labels, slot_ids, slot_labels)


def clear_grads(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def bare_steps(model: nn.Module, inputs: Inputs, length: int) -> tuple[Step, Step]:
    """(train, infer) closures for the bare model on the first `length` tokens of a (B, T + P) batch."""
    ids = torch.cat([inputs.ids, inputs.ids], dim=1)[:, :length]
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


def prompt_steps(model: nn.Module, params: list[nn.Parameter], ids: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[Step, Step]:
    def train() -> None:
        clear_grads(params)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()

    def infer() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

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
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    train_ratios: list[float] = field(default_factory=list)
    infer_ratios: list[float] = field(default_factory=list)


def build_cell(lib: str, method: str, family: str, template: nn.Module, inputs: Inputs, tokens: int) -> Cell:
    cell = Cell(lib, method)
    model = copy.deepcopy(template)
    slots = method == "p-tuning" and lib == "softprompt"
    ids = inputs.slot_ids if slots else inputs.ids
    labels = inputs.slot_labels if slots else inputs.labels
    mask = torch.ones_like(ids)
    try:
        if lib == "softprompt":
            wrapped: nn.Module = softprompt.attach(model, softprompt_config(method, tokens))
            params = wrapped.trainable_parameters()
        else:
            task_type = "CAUSAL_LM" if family == "gpt2" else "SEQ_CLS"
            hidden = model.config.hidden_size
            wrapped = peft.get_peft_model(model, peft_config(method, tokens, task_type, hidden))
            params = [p for p in wrapped.parameters() if p.requires_grad]
        wrapped.eval()
        cell.params = sum(p.numel() for p in params)
        cell.train, cell.infer = prompt_steps(wrapped, params, ids, mask, labels)
        cell.train()  # also the first warmup: fails here if the library cannot run this model
        missing = [i for i, p in enumerate(params) if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(params)} trainable tensors got no gradient")
        cell.infer()
    except Exception as error:  # noqa: BLE001 -- a failing library is a result, recorded in the table
        cell.train = cell.infer = None
        cell.error = f"{type(error).__name__}: {error}"
    return cell


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


def timed(step: Step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


@dataclass
class FamilyResult:
    family: str
    bare: Cell  # T tokens
    bare_long: Cell  # T + P tokens
    cells: dict[tuple[str, str], Cell]
    long_train_ratios: list[float] = field(default_factory=list)
    long_infer_ratios: list[float] = field(default_factory=list)


def run_family(family: str, args: argparse.Namespace, rng: random.Random) -> FamilyResult:
    template = build_model(family)
    vocab = template.config.vocab_size
    inputs = make_inputs(family, args.batch, args.length, args.tokens, vocab)
    bare = Cell("bare", f"{args.length} tokens")
    bare.train, bare.infer = bare_steps(template, inputs, args.length)
    bare_long = Cell("bare", f"{args.length + args.tokens} tokens")
    bare_long.train, bare_long.infer = bare_steps(template, inputs, args.length + args.tokens)
    cells: dict[tuple[str, str], Cell] = {}
    for method in args.methods:
        for lib in LIBS:
            cells[lib, method] = build_cell(lib, method, family, template, inputs, args.tokens)
            status = "ok" if cells[lib, method].error is None else cells[lib, method].error
            print(f"  built {family} {lib} {method}: {status}", flush=True)
    result = FamilyResult(family, bare, bare_long, cells)

    # Blocks: one per method (bare, softprompt, PEFT) plus one for the extra tokens (bare T, bare T + P).
    blocks: list[tuple[str, list[Cell]]] = [("tokens", [bare, bare_long])]
    for method in args.methods:
        blocks.append((method, [bare] + [cells[lib, method] for lib in LIBS if cells[lib, method].train]))
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
                    else:
                        getattr(cell, f"{kind}_ratios").append(ratio)
        label = "warmup" if rep < 0 else f"rep {rep + 1}/{args.reps}"
        print(f"  {family} {label}: {time.perf_counter() - started:.1f} s", flush=True)
    for cell in (bare, bare_long, *cells.values()):
        cell.train = cell.infer = None  # let the models go
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


def verdicts(sp: Cell, pf: Cell) -> tuple[str, str]:
    """(target 1: softprompt overhead <= PEFT's, target 2: softprompt train step <= 1.10 x bare)."""
    if sp.error:
        return "FAIL (softprompt fails)", "FAIL (softprompt fails)"
    train, infer = med(sp.train_ratios), med(sp.infer_ratios)
    if pf.error:
        first = "n/a (PEFT fails)"
    else:
        slower = [k for k, a, b in (("train", train, med(pf.train_ratios)), ("infer", infer, med(pf.infer_ratios)))
                  if a > b]
        first = "PASS" if not slower else f"FAIL ({', '.join(slower)})"
    second = "PASS" if train <= TRAIN_TARGET else "FAIL"
    return first, second


def render(results: list[FamilyResult], args: argparse.Namespace, command: str, seconds: float,
           latency: tuple[float, float]) -> str:
    lines = [
        "# softprompt vs PEFT vs the bare frozen model (CPU)",
        "",
        "Regenerated by `bench/bench.py`; do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"softprompt {getattr(softprompt, '__version__', 'src')}, Python {platform.python_version()}",
        f"- CPU: {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); the machine was shared with other jobs, so absolute "
        "times are noisy -- read the paired ratios",
        f"- small-op latency (median of a 0.4 MB `torch.cat`) at {torch.get_num_threads()} thread(s): "
        f"{1e6 * latency[0]:.0f} us before the run, {1e6 * latency[1]:.0f} us after (about 10 us on a free core; "
        "milliseconds mean torch's worker threads wait for cores held by other jobs, so op count rather "
        "than arithmetic dominates -- use `--threads 1` then)",
        f"- batch {args.batch}, {args.length} input tokens, {args.tokens} virtual tokens, float32, eval mode "
        f"(no dropout), {args.warmup} warmup + {args.reps} timed repetitions, total run {seconds:.0f} s",
        "",
        "**Measured.** *train*: one training step = forward + backward on the loss (GPT-2: LM loss on every "
        "token; BERT: sequence-classification loss), prompt parameters get gradients, weights frozen. For the "
        "bare model the step is forward + backward with gradients flowing to `inputs_embeds` (weights frozen): "
        "the least a prompt method must pay. *infer*: one forward under `torch.no_grad()`. Times are medians "
        "in ms. Ratios are medians over repetitions of (time / bare time measured in the same block, back to "
        "back), with the interquartile range in parentheses; the bare reference is always the "
        f"{args.length}-token model.",
        "",
        "**Method settings.** prompt tuning: 10 soft tokens before the input (PEFT `PromptTuningConfig`). "
        "P-Tuning: LSTM prompt encoder (softprompt `PTuningConfig(encoder='lstm')`, template "
        f"`[P:{args.tokens // 2}] {{text}} [P:{args.tokens - args.tokens // 2}]`; PEFT `PromptEncoderConfig("
        "encoder_reparameterization_type='LSTM', encoder_hidden_size=768)`, which prepends all soft tokens). "
        "Prefix tuning: Linear-Tanh-Linear reparameterization of width 512 (softprompt "
        "`projection_hidden_size=512`; PEFT `prefix_projection=True, encoder_hidden_size=512`). P-Tuning v2: "
        "plain key/value table (softprompt `PTuningV2Config(prefix_dropout=0)`; PEFT `PrefixTuningConfig("
        "prefix_projection=False)`). Models: GPT2LMHeadModel (12 layers, 768 hidden, 12 heads, vocab 50257) "
        "and BertForSequenceClassification (BERT-base shape, 2 labels; PEFT task type SEQ_CLS also trains "
        "the classifier, softprompt keeps it frozen).",
        "",
        "**Targets** (marked on each softprompt row, judged on the median ratios):",
        "",
        "1. softprompt's overhead over the bare model is no larger than PEFT's: softprompt/bare <= PEFT/bare "
        "for both train and infer (strict; the IQRs show how much of a difference is noise).",
        f"2. softprompt's training step is within {100 * (TRAIN_TARGET - 1):.0f}% of the bare model's forward + "
        f"backward: train ratio <= {TRAIN_TARGET:.2f}, for every method at {args.tokens} virtual tokens and "
        f"{args.length} input tokens.",
        "",
    ]
    for result in results:
        name = {"gpt2": "GPT-2 small shape (GPT2LMHeadModel)", "bert": "BERT-base shape (BertForSequenceClassification)"}
        lines += [
            f"## {name[result.family]}",
            "",
            "| method | library | trainable params | train ms | train / bare | infer ms | infer / bare "
            "| target 1 (<= PEFT) | target 2 (train <= 1.10) |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        b, bl = result.bare, result.bare_long
        lines.append(f"| bare, {b.method} | – | 0 | {ms(b.train_times)} | 1 | {ms(b.infer_times)} | 1 | | |")
        lines.append(
            f"| bare, {bl.method} | – | 0 | {ms(bl.train_times)} | {ratio_text(result.long_train_ratios)} "
            f"| {ms(bl.infer_times)} | {ratio_text(result.long_infer_ratios)} | | |"
        )
        for method in args.methods:
            sp, pf = result.cells["softprompt", method], result.cells["peft", method]
            first, second = verdicts(sp, pf)
            for cell, marks in ((sp, (first, second)), (pf, ("", ""))):
                if cell.error:
                    error = cell.error.replace("|", "/").replace("\n", " ")[:160]
                    lines.append(f"| {method} | {cell.lib} | – | **fails**: {error} | | | | {marks[0]} | {marks[1]} |")
                else:
                    lines.append(
                        f"| {method} | {cell.lib} | {cell.params:,} | {ms(cell.train_times)} | "
                        f"{ratio_text(cell.train_ratios)} | {ms(cell.infer_times)} | {ratio_text(cell.infer_ratios)} "
                        f"| {marks[0]} | {marks[1]} |"
                    )
        lines.append("")
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------------------
def profile(spec: str, args: argparse.Namespace) -> None:
    """Profile one cell: cProfile of softprompt's Python (3 steps), then torch ops of bare, softprompt, PEFT."""
    family, method = spec.split(":")
    template = build_model(family)
    inputs = make_inputs(family, args.batch, args.length, args.tokens, template.config.vocab_size)
    cell = build_cell("softprompt", method, family, template, inputs, args.tokens)
    if cell.error:
        print(cell.error)
        return
    bare = Cell("bare", f"{args.length} tokens")
    bare.train, bare.infer = bare_steps(template, inputs, args.length)
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
    parser.add_argument("--quick", action="store_true", help="1 warmup + 2 repetitions (a smoke test)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 4, quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warmup passes")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128, help="input tokens")
    parser.add_argument("--tokens", type=int, default=10, help="virtual tokens")
    parser.add_argument("--models", nargs="+", default=["gpt2", "bert"], choices=["gpt2", "bert"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled block order")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--profile", metavar="MODEL:METHOD", help="cProfile one softprompt cell instead")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
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
        results.append(run_family(family, args, rng))
        gc.collect()
    report = render(results, args, command, time.perf_counter() - started, (latency_before, small_op_latency()))
    args.out.write_text(report + "\n")
    print()
    print(report)


if __name__ == "__main__":
    main()
