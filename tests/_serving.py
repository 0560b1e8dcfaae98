"""Run folders on the tiny models of tests/_tiny.py for the server tests: prompts that change the answers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import softprompt
from softprompt import _run
from softprompt.models import load_model

import _tiny

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} | {% endfor %}{% if add_generation_prompt %}=>{% endif %}"
"""A chat template in the word-level vocabulary of the tiny GPT-2 (roles and contents as words, '|' between turns)."""


def perturb(pm, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator))


def base_gpt2(folder: Path) -> Path:
    """The tiny GPT-2 with a chat template, its weights drawn wide so that its answers depend on the prompt.

    (GPT-2's own initialization, std 0.02, gives a 2-layer model that repeats the last input token whatever
    precedes it.)
    """
    _tiny.gpt2(folder)
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_pretrained(folder)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def run_folder(out: Path, model: Path, config: softprompt.TaskConfig, task_type: str, seed: int,
               labels: list[str] | None = None, max_length: int = 32, separator: str = " => ") -> Path:
    """A run folder as `softprompt train` leaves it (config.yaml + best/), with a perturbed prompt."""
    base, tokenizer = load_model(str(model))
    torch.manual_seed(seed)
    pm = softprompt.attach(base, config, tokenizer)
    perturb(pm, seed)
    pm.eval()
    pm.export(out / _run.BEST)
    _run.write_config(out, {"model": str(model), "method": config.method, "task_type": task_type,
                            "labels": labels or [], "max_length": max_length, "separator": separator,
                            "max_new_tokens": 16})
    return out


def gpt2_runs(root: Path) -> tuple[Path, dict[str, Path]]:
    """The tiny GPT-2 and four runs on it: three generation prompts of different methods and a classifier."""
    model = base_gpt2(root / "gpt2")
    runs = {
        "e2e": run_folder(root / "e2e", model, softprompt.PromptTuningConfig(num_virtual_tokens=4), "generation", 1),
        "data2text": run_folder(root / "data2text", model, softprompt.PrefixTuningConfig(num_virtual_tokens=3,
                                projection_hidden_size=16), "generation", 2),
        "names": run_folder(root / "names", model, softprompt.PTuningV2Config(num_virtual_tokens=5, prefix_dropout=0.0),
                            "generation", 3),
        "sentiment": run_folder(root / "sentiment", model, softprompt.PTuningV2Config(
            num_virtual_tokens=2, prefix_dropout=0.0, labels=["neg", "pos"], label_words={"neg": "bad", "pos": "good"}),
            "classification", 4, labels=["neg", "pos"]),
    }
    return model, runs


def bert_runs(root: Path) -> tuple[Path, dict[str, Path]]:
    """The tiny BERT and two runs on it: sentence classification and token classification (fresh heads)."""
    model = _tiny.bert(root / "bert")
    runs = {
        "polarity": run_folder(root / "polarity", model, softprompt.PTuningV2Config(
            num_virtual_tokens=3, prefix_dropout=0.0, head="sequence-classification", labels=["neg", "pos"],
            head_dropout=0.0), "classification", 5, labels=["neg", "pos"]),
        "ner": run_folder(root / "ner", model, softprompt.PTuningV2Config(
            num_virtual_tokens=3, prefix_dropout=0.0, head="token-classification", labels=["O", "B-PER", "B-LOC", "B-ORG"],
            head_dropout=0.0), "token-classification", 6, labels=["O", "B-PER", "B-LOC", "B-ORG"]),
    }
    return model, runs


@contextlib.contextmanager
def serving(server, host: str = "127.0.0.1") -> Iterator[str]:
    """The app of `server` under uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    from softprompt._http import create_app

    config = uvicorn.Config(create_app(server), host=host, port=free_port(), log_level="warning")
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{config.port}"
    finally:
        runner.should_exit = True
        thread.join(30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def paused(engine) -> Iterator[None]:
    """Hold the engine's thread between two steps: whatever is submitted meanwhile waits in its queue."""
    holding, release = threading.Event(), threading.Event()
    engine.call(lambda: (holding.set(), release.wait(30)))
    assert holding.wait(30), "the engine did not reach the pause"
    try:
        yield
    finally:
        release.set()


def wait_for(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def run_collator(run: Path):
    """The Collator `softprompt generate` predicts with for a run folder (on a fresh copy of its model)."""
    from softprompt._collate import Collator

    folder, prompt = _run.prompt_dir(Path(run))
    values = _run.read_config(folder)
    base, tokenizer = load_model(values["model"])
    pm = softprompt.load(base, prompt, tokenizer=tokenizer)
    return Collator(pm, values["task_type"], values["labels"], values["max_length"], values["separator"])


@contextlib.contextmanager
def server_process(args: list[str], log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`softprompt serve ARGS` in a process of its own on a free port; yields (process, base URL) once healthy."""
    import httpx2 as httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", *args, "--port", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"softprompt serve exited with {process.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"softprompt serve did not become healthy: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def long_gpt2(folder: Path) -> Path:
    """A GPT-2 of the tiny vocabulary that never stops by itself: 1024 positions and no stop token."""
    _tiny.gpt2(folder)
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_pretrained(folder)
    config.update({"n_embd": 128, "n_layer": 4, "n_positions": 1024, "initializer_range": 0.3})
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    GenerationConfig(eos_token_id=None, pad_token_id=2).save_pretrained(folder)
    return folder
