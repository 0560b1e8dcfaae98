"""``softprompt serve``: one frozen base model and many prompts behind an OpenAI-compatible HTTP API.

Every prompt given -- a run folder, an exported prompt, a PEFT prompt adapter -- becomes a task on
one PromptModel, and the bare base model (a causal LM) is served too, under its own name. Text
becomes token rows exactly as ``softprompt generate`` makes them for a run (its Collator: the text
and the run's separator, the run's input limit, the same decoding), so a greedy answer is the one
the command prints. The engine (:mod:`softprompt._engine`) batches the rows of every task into
shared forwards; the HTTP layer (:mod:`softprompt._http`, FastAPI on uvicorn) speaks OpenAI's
completions and chat completions, plus ``/v1/classify``. The server keeps no state but its prompts,
so replicas behind any HTTP load balancer scale it out.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import nn

from .errors import UserError
from . import _run
from ._collate import Collator, TaskKind
from ._engine import Engine, NoPrompt
from ._http import ApiError
from .checkpoint import CheckpointError, load
from .data import Example
from .model import PromptModel
from .peft_format import is_peft_folder
from .train import TrainArgs

API_KEY_VARIABLE = "SOFTPROMPT_API_KEY"


@dataclass
class Served:
    """A task as the API shows it: its public name, the key of its prompt on the model, how text becomes rows."""

    name: str
    key: str
    kind: TaskKind
    collator: Collator | None  # None for the bare base model: the tokenizer's own ids
    method: str | None = None
    source: str | None = None
    max_new_tokens: int = TrainArgs.max_new_tokens
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def endpoint(self) -> str:
        return "/v1/completions" if self.kind == "generation" else "/v1/classify"


def parse_prompts(values: list[str] | str | None) -> dict[str, str]:
    """{name: folder} from NAME=FOLDER strings, each of which may hold several, comma-separated."""
    if isinstance(values, str):
        values = [values]
    prompts: dict[str, str] = {}
    for value in values or []:
        for item in value.split(","):
            name, sep, folder = item.partition("=")
            if not sep or not name.strip() or not folder.strip():
                raise UserError(f"--prompt {item!r}: expected NAME=FOLDER, e.g. --prompt e2e=runs/e2e")
            if name.strip() in prompts:
                raise UserError(f"--prompt: the name {name.strip()!r} is given twice; give each prompt its own name")
            prompts[name.strip()] = folder.strip()
    return prompts


def read_prompt(text_pm: PromptModel, pm: PromptModel, name: str, key: str, folder: str | Path) -> Served:
    """Add the prompt in `folder` to `pm` as task `key`; the Served entry turns text into rows with `text_pm`.

    A run folder brings its task type, labels, input limit and separator (``config.yaml``); an export
    or PEFT folder without a run takes the training defaults, classifying when its prompt has a head
    or label words.
    """
    path = Path(folder)
    values = {}
    if (path / "softprompt.json").is_file() or not is_peft_folder(path):
        run, path = _run.prompt_dir(path)
        if (run / _run.CONFIG).is_file():
            values = _run.read_config(run)
    loaded = load(pm.base_model, path, tokenizer=pm.tokenizer)
    try:
        if len(loaded.tasks) != 1:
            raise CheckpointError(f"{path} holds {len(loaded.tasks)} tasks ({list(loaded.tasks)}); serve takes one per name")
        task = next(iter(loaded.tasks.values()))
        config = task.config
        kind = values.get("task_type") or (
            "token-classification" if config.head == "token-classification"
            else "classification" if config.head or config.labels or config.label_words else "generation")
        if kind == "generation" and pm.family.layout != "decoder":
            raise CheckpointError(f"{folder}: a generation prompt on a {pm.family.layout} model; serve generates "
                                  "with decoder-only (causal) models only")
        pm.add_task(key, config, initialize=False)
        pm.tasks[key].load_state_dict(task.state_dict())
    finally:
        loaded.detach()
    labels = list(values.get("labels") or config.labels or config.label_words or [])
    if kind != "generation" and not labels:
        labels = [str(i) for i in range(config.num_labels or 0)]
    collator = Collator(text_pm, kind, labels, values.get("max_length", TrainArgs.max_length),
                        values.get("separator", TrainArgs.separator))
    return Served(name, key, kind, collator, config.method, str(folder),
                  values.get("max_new_tokens", TrainArgs.max_new_tokens))


class Metrics:
    """Prometheus metrics of one server, in a registry of its own."""

    def __init__(self, window: float = 10.0) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("softprompt_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=registry)
        self.queue = Gauge("softprompt_queue_length", "Rows waiting for a prefill or classification forward", registry=registry)
        self.active = Gauge("softprompt_active_rows", "Rows in the decoding batch", registry=registry)
        self.batch = Histogram("softprompt_batch_rows", "Rows per forward, by kind of forward", ["kind"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
        self.tokens = Counter("softprompt_generated_tokens", "Tokens generated", registry=registry)
        self.rate = Gauge("softprompt_tokens_per_second", f"Tokens generated per second over the last {window:g} s",
                          registry=registry)
        self.finished = Counter("softprompt_rows_finished", "Generated rows by how they ended", ["reason"], registry=registry)
        self.window = window
        self._recent: deque[tuple[float, int]] = deque()

    def watch(self, engine: Engine) -> None:
        self.queue.set_function(lambda: engine.waiting)
        self.active.set_function(lambda: engine.active)
        self.rate.set_function(self._per_second)

    def step(self, kind: str, rows: int, tokens: int) -> None:
        self.batch.labels(kind).observe(rows)
        if tokens:
            self.tokens.inc(tokens)
            self._recent.append((time.monotonic(), tokens))

    def _per_second(self) -> float:
        start = time.monotonic() - self.window
        while self._recent and self._recent[0][0] < start:
            self._recent.popleft()
        return sum(n for _, n in list(self._recent)) / self.window


class Server:
    """The served tasks on one base model, the engine that runs them, and the checks a request passes first."""

    def __init__(self, model: nn.Module, tokenizer, name: str, *, api_key: str | None = None,
                 max_batch_size: int = 16, max_queue: int = 64) -> None:
        self.name = name
        self.api_key = api_key
        self.pm = PromptModel(model, None, tokenizer=tokenizer).eval()
        # Requests are tokenized on the web thread while the engine's thread may tokenize inside a forward
        # (P-Tuning templates); a fast tokenizer used from two threads at once can fail, so each has its own.
        self.text = PromptModel(model, None, tokenizer=copy.deepcopy(tokenizer))
        self.text.tasks = self.pm.tasks
        self.tokenizer = self.text.tokenizer
        self.tasks: dict[str, Served] = {}
        self._keys = 0
        self.metrics = Metrics()
        self.engine = Engine(self.pm, max_batch_size, max_queue, on_step=self.metrics.step,
                             on_finish=lambda reason: self.metrics.finished.labels(reason).inc())
        self.metrics.watch(self.engine)
        if self.pm.family.layout == "decoder" and model.get_output_embeddings() is not None:
            key = self._key()
            self.pm.tasks[key] = NoPrompt()
            self.tasks[name] = Served(name, key, "generation", None)

    def _key(self) -> str:
        # Public names may hold dots and slashes (paths, hub names), which module names cannot.
        self._keys += 1
        return f"task{self._keys}"

    # -- prompts ---------------------------------------------------------------------------------
    def add(self, name: str, folder: str | Path) -> Served:
        """Load a prompt and serve it as `name` (before the engine runs; afterwards `load` runs in its thread)."""
        if name in self.tasks:
            raise UserError(f"a task named {name!r} is served already (the base model is served under --model's name); "
                            "pick another name")
        self.tasks[name] = served = self.load(name, folder)
        return served

    def load(self, name: str, folder: str | Path) -> Served:
        """Put the prompt in `folder` on the model, not yet served (nothing else may touch the model meanwhile)."""
        if not name or name != name.strip():
            raise UserError(f"prompt name {name!r}: give a non-empty name without surrounding spaces")
        return read_prompt(self.text, self.pm, name, self._key(), folder)

    def remove(self, name: str) -> None:
        """Stop taking requests for `name`; its prompt leaves the model once its running requests end."""
        served = self.lookup(name)
        if served.collator is None:
            raise ApiError(400, f"{name!r} is the base model itself; only prompts can be unloaded")
        del self.tasks[name]
        self.engine.retire(served.key)

    def lookup(self, name: str, kind: str | None = None) -> Served:
        served = self.tasks.get(name)
        if served is None:
            raise ApiError(404, f"model {name!r} is not served here; served: {sorted(self.tasks)} (GET /v1/models)",
                           code="model_not_found")
        if kind == "generation" and served.kind != "generation":
            raise ApiError(400, f"model {name!r} classifies ({served.kind}); POST /v1/classify")
        if kind == "classify" and served.kind == "generation":
            raise ApiError(400, f"model {name!r} generates text; POST /v1/completions")
        return served

    # -- text to rows ----------------------------------------------------------------------------
    def room(self) -> int | None:
        """Positions the model has for a prompt, an input and its completion."""
        config = self.pm.base_model.config
        limit = getattr(config, self.pm.family.position_limit or "max_position_embeddings", None)
        return None if limit is None else limit - (self.pm.family.position_offset or 0)

    def prompt_tokens(self, served: Served) -> int:
        """Positions a task's prompt takes before the input (its soft tokens or key/value prefix)."""
        task = self.pm.tasks[served.key]
        return 0 if task.config is None else task.config.num_virtual_tokens or 0

    def completion_ids(self, served: Served, text: str) -> list[int]:
        """The ids `softprompt generate` feeds the model for `text`: the run's text + separator, else the tokenizer's."""
        if served.collator is None:
            return self.tokenizer(text)["input_ids"]
        whole = dataclasses.replace(served.collator, max_length=sys.maxsize)._source_ids(Example(text=text))
        limit = (served.collator.max_length + 1) // 2  # what the Collator keeps of a source, leaving room for the target
        if len(whole) > limit:
            raise ApiError(400, f"the input is {len(whole)} tokens with its separator; model {served.name!r} takes at most "
                                f"{limit} (half its run's max_length {served.collator.max_length}); shorten it")
        return whole

    def chat_ids(self, served: Served, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, f"model {served.name!r} has no chat template; POST /v1/completions")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def budget(self, served: Served, rows: list[list[int]], max_tokens: int | None) -> int:
        """The tokens each row may generate: `max_tokens`, or the task's default; 400 when the positions run out."""
        room = self.room()
        if room is None:
            return max_tokens or served.max_new_tokens
        used = max(len(r) for r in rows) + self.prompt_tokens(served)
        left = room - used
        if left < 1:
            raise ApiError(400, f"the input is {used - self.prompt_tokens(served)} tokens and model {served.name!r}'s "
                                f"prompt takes {self.prompt_tokens(served)} positions, but the model has {room}; shorten "
                                "the input", param="prompt")
        if max_tokens is None:
            return min(served.max_new_tokens, left)
        if max_tokens > left:
            raise ApiError(400, f"max_tokens is {max_tokens} but only {left} positions are left after the input and the "
                                f"prompt ({used} of {room}); ask for at most {left}", param="max_tokens")
        return max_tokens

    def classify_row(self, served: Served, text: str) -> tuple[list[int], list[int | None] | None, list[str]]:
        """(ids, the word of each id for token classification, the words) as the run's Collator makes them."""
        collator = served.collator
        words = text.split()
        if served.kind == "token-classification":
            batch, word_ids = dataclasses.replace(collator, max_length=sys.maxsize)._tokens(
                [Example(text=text, tokens=words)], with_labels=False)
            ids, which = batch["input_ids"][0].tolist(), word_ids[0]
        else:
            ids, which = self.text.tokenize([text], task=served.key, max_length=sys.maxsize)["input_ids"][0].tolist(), None
        if len(ids) > collator.max_length:
            raise ApiError(400, f"the input is {len(ids)} tokens; model {served.name!r} takes at most {collator.max_length} "
                                "(its run's max_length); shorten it", param="input")
        room = self.room()
        if room is not None and len(ids) + self.prompt_tokens(served) > room:
            raise ApiError(400, f"the input is {len(ids)} tokens and the prompt takes {self.prompt_tokens(served)} "
                                f"positions, but the model has {room}; shorten it", param="input")
        return ids, which, words


def serve(*, model: str, prompt: list[str] | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_batch_size: int = 16, max_queue: int = 64) -> None:
    """Serve a base model and its prompts over an OpenAI-compatible HTTP API (see README: Serving).

    Args:
        model: base model, a short name (minilm, smollm2) or a Hugging Face model folder; a causal LM is served
            bare under this name
        prompt: NAME=FOLDER, repeated for each prompt (or NAME=FOLDER,NAME=FOLDER): a run folder, exported prompt
            or PEFT prompt adapter served as model NAME
        host: address to listen on (0.0.0.0 for every interface)
        port: TCP port to listen on
        api_key: key every /v1 request must send as 'Authorization: Bearer KEY' (default: the SOFTPROMPT_API_KEY
            environment variable; none: open)
        max_batch_size: rows decoded together at most
        max_queue: rows waiting at most; more get 429 with Retry-After
    """
    import uvicorn

    from ._http import create_app
    from .models import load_model

    for flag, value in (("--max-batch-size", max_batch_size), ("--max-queue", max_queue)):
        if value < 1:
            raise UserError(f"{flag} {value}: give at least 1")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: give a TCP port from 0 to 65535")
    _check_address(host, port)  # before the model loads, which can take a while
    prompts = parse_prompts(prompt)
    base, tokenizer = load_model(model)
    server = Server(base, tokenizer, model, api_key=api_key or os.environ.get(API_KEY_VARIABLE) or None,
                    max_batch_size=max_batch_size, max_queue=max_queue)
    for name, folder in prompts.items():
        server.add(name, folder)
    if not server.tasks:
        raise UserError(f"{model} is not a causal LM, so only prompts can be served: give --prompt NAME=FOLDER")
    print(f"softprompt: serving {sorted(server.tasks)} on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")


def _check_address(host: str, port: int) -> None:
    """A one-line error now for an address uvicorn could not listen on later."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UserError(f"--host {host}: {exc.strerror or exc}; give an address of this machine, e.g. 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            fix = ("pick another port, or stop what listens there" if exc.errno == errno.EADDRINUSE
                   else "give an address of this machine, e.g. 127.0.0.1")
            raise UserError(f"--host {host} --port {port}: {exc.strerror or exc}; {fix}") from None


__all__ = ["Metrics", "Served", "Server", "parse_prompts", "read_prompt", "serve"]
