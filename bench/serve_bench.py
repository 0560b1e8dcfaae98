"""What serving costs and what batching buys: `softprompt serve` timed on the CPU, ratios in one run.

For a model -- a small random GPT-2 built in code and, with ``--smollm2``, SmolLM2-135M-Instruct (real
weights) -- with eight P-Tuning v2 prompts on it (random, exported like a run's), the script starts the
server in this process (uvicorn on loopback) and measures, with the official ``openai`` client:

* **concurrency**: the same requests sent by 16 clients at once against one client at a time
  (generated tokens per second, both ways);
* **mixed tasks**: the same requests, 16 clients, spread over the eight prompts against all sent to
  one of them (the target is >= 0.9x);
* **mixed tasks, the engine alone**: the same comparison with no HTTP and no clients, the rows queued at
  once and run in this thread, in generated tokens per CPU second (steadier on a shared machine);
* **serving overhead**: one greedy request at a time against ``PromptModel.generate`` called in
  this process for the same input and prompt (median latency; the answers are checked to be equal).

Every request generates exactly ``--tokens`` tokens (the stop token is switched off for the run), so
every configuration does the same arithmetic. Repetitions alternate the configurations compared
(ABAB...), and each ratio is the median of the per-repetition ratios, so slow phases of a shared
machine mostly cancel. The table goes to stdout and to ``bench/SERVE_RESULTS.md``.

Run::

    .venv/bin/python bench/serve_bench.py --threads 1            # tiny GPT-2 only (~1 min)
    .venv/bin/python bench/serve_bench.py --threads 1 --smollm2  # and SmolLM2-135M (~10 min)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import torch
import transformers

import softprompt
from softprompt._engine import Generation
from softprompt.models import load_model
from softprompt.serve import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _serving import serving  # noqa: E402  (the loopback runner the tests use)

WORDS = ("the movie was good bad great film name food area city place john lives in paris acme works at a very "
         "fine poor awful is").split()


def tiny_gpt2(folder: Path) -> Path:
    """A random GPT-2 (4 layers, width 256, 1024 positions) with a word-level tokenizer, saved like a hub folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=256, n_layer=4, n_head=4, n_positions=1024, eos_token_id=1,
                        bos_token_id=1, initializer_range=0.1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def prompts(model: str, root: Path, count: int) -> dict[str, Path]:
    """`count` P-Tuning v2 prompts (16 tokens, random values) exported to folders."""
    base, tokenizer = load_model(model)
    folders = {}
    for i in range(count):
        torch.manual_seed(i)
        pm = softprompt.attach(base, softprompt.PTuningV2Config(num_virtual_tokens=16, prefix_dropout=0.0), tokenizer)
        with torch.no_grad():
            for p in pm.trainable_parameters():
                p.normal_(0, 0.5)
        pm.eval().export(root / f"task{i}")
        pm.detach()
        folders[f"task{i}"] = root / f"task{i}"
    return folders


def requests_for(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(count)]


def send(client: openai.OpenAI, jobs: list[tuple[str, str]], tokens: int, clients: int) -> float:
    """Send every (model, text) job greedily with `clients` concurrent clients; generated tokens per second."""
    def one(job: tuple[str, str]) -> int:
        out = client.completions.create(model=job[0], prompt=job[1], max_tokens=tokens, temperature=0)
        return out.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        generated = sum(pool.map(one, jobs))
    seconds = time.perf_counter() - start
    if generated != tokens * len(jobs):
        raise RuntimeError(f"expected {tokens * len(jobs)} tokens, got {generated}")
    return generated / seconds


def measure(name: str, model: str, root: Path, args: argparse.Namespace) -> list[str]:
    folders = prompts(model, root, 8)
    base, tokenizer = load_model(model)
    base.generation_config.eos_token_id = None  # every request generates exactly --tokens tokens
    server = Server(base, tokenizer, model, max_batch_size=16, max_queue=1024)
    for task, folder in folders.items():
        server.add(task, folder)
    texts = requests_for(args.requests)
    tasks = list(folders)
    rows = []

    # The engine alone, before the server starts: the same rows mixed over eight tasks or all of one task, timed
    # in CPU seconds of this process (what a shared machine's other work does not change much).
    def engine_run(jobs: list[tuple[str, str]]) -> float:
        batch = [Generation(server.tasks[task].key, server.completion_ids(server.tasks[task], text), args.tokens,
                            lambda event, value: None) for task, text in jobs]
        server.engine.submit(batch)
        start = time.process_time()
        server.engine.run_pending()
        return time.process_time() - start

    mixed_jobs = [(tasks[i % 8], t) for i, t in enumerate(texts)]
    single_jobs = [(tasks[0], t) for t in texts]
    engine_run(single_jobs)  # warm-up
    mixed, single = [], []
    for _ in range(args.reps):
        mixed.append(len(texts) * args.tokens / engine_run(mixed_jobs))
        single.append(len(texts) * args.tokens / engine_run(single_jobs))
    rows.append(row(name, "8 tasks mixed vs 1 task, the engine alone (no HTTP; CPU time)", mixed, single,
                    "tokens/CPU-s", target=0.9))

    with serving(server) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        send(client, [(tasks[0], t) for t in texts[:16]], args.tokens, 16)  # warm-up

        # 16 clients against one client at a time, the same requests (spread over the eight tasks).
        concurrent, sequential = [], []
        for _ in range(args.reps):
            concurrent.append(send(client, mixed_jobs, args.tokens, 16))
            sequential.append(send(client, mixed_jobs, args.tokens, 1))
        rows.append(row(name, "16 clients vs 1 client at a time", concurrent, sequential, "tokens/s"))

        # Eight tasks mixed in the batches against one task, the same requests, 16 clients.
        mixed, single = [], []
        for _ in range(args.reps):
            mixed.append(send(client, mixed_jobs, args.tokens, 16))
            single.append(send(client, single_jobs, args.tokens, 16))
        rows.append(row(name, "8 tasks mixed vs 1 task (16 clients)", mixed, single, "tokens/s", target=0.9))

        # One greedy request at a time: the server against PromptModel.generate in this process.
        reference = softprompt.load(base, folders[tasks[0]], tokenizer=tokenizer).eval()
        served, local = [], []
        for text in texts[: args.latency]:
            start = time.perf_counter()
            answer = client.completions.create(model=tasks[0], prompt=text, max_tokens=args.tokens, temperature=0)
            served.append(time.perf_counter() - start)
            ids = tokenizer(text + " => ", add_special_tokens=False, return_tensors="pt")
            start = time.perf_counter()
            with torch.no_grad():
                out = reference.generate(**ids, max_new_tokens=args.tokens, do_sample=False)
            local.append(time.perf_counter() - start)
            expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            if answer.choices[0].text != expected:
                raise RuntimeError(f"the server answered {answer.choices[0].text!r}, generate {expected!r}")
        rows.append(row(name, "server latency vs pm.generate in-process (1 request)", served, local, "s", lower=True))
    return rows


def row(model: str, what: str, ours: list[float], theirs: list[float], unit: str, target: float | None = None,
        lower: bool = False) -> str:
    ratios = sorted(a / b for a, b in zip(ours, theirs))
    ratio = statistics.median(ratios)
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    verdict = "" if target is None else (" (target >= 0.9: met)" if ratio >= target else " (target >= 0.9: MISSED)")
    fmt = (lambda v: f"{v * 1000:.1f} ms") if unit == "s" else (lambda v: f"{v:.0f} {unit}")
    return (f"| {model} | {what} | {fmt(statistics.median(ours))} | {fmt(statistics.median(theirs))} | "
            f"**{ratio:.2f}x** ({spread}){verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M-Instruct")
    parser.add_argument("--requests", type=int, default=64, help="requests per configuration")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each comparison")
    parser.add_argument("--latency", type=int, default=8, help="requests timed one by one for the latency row")
    parser.add_argument("--out", default=str(Path(__file__).with_name("SERVE_RESULTS.md")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows += measure("random GPT-2 (4 layers, width 256)", str(tiny_gpt2(root / "gpt2")), root / "gpt2-prompts", args)
        if args.smollm2:
            args.requests, args.latency = min(args.requests, 48), min(args.latency, 4)
            rows += measure("SmolLM2-135M-Instruct", "smollm2", root / "smollm2-prompts", args)
    command = "python bench/serve_bench.py " + " ".join(sys.argv[1:])
    report = "\n".join([
        "# softprompt serve: batching and overhead", "",
        f"`{command}` on {datetime.date.today()}, {platform.machine()} CPU, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, transformers {transformers.__version__}. Eight P-Tuning v2 prompts (16 tokens) "
        f"on the base model; every request generates exactly {args.tokens} tokens greedily. A ratio is the median of "
        "the per-repetition ratios (range in brackets); for latency, lower is better.", "",
        "| model | comparison | ours | baseline | ratio |", "| --- | --- | --- | --- | --- |", *rows, "",
    ])
    print(report)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
