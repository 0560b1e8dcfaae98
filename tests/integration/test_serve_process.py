"""`softprompt serve` as its own process: SIGTERM lets running requests finish, and a load of a few hundred
requests from 16 clients gets no error and leaves the server's memory flat."""

from __future__ import annotations

import http.client
import json
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

import _serving

pytestmark = pytest.mark.slow


def test_sigterm_finishes_the_running_requests_then_exits(tmp_path: Path) -> None:
    model = _serving.long_gpt2(tmp_path / "gpt2")
    log = tmp_path / "serve.log"
    with _serving.server_process(["--model", str(model)], log) as (process, url):
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"model": str(model), "prompt": "a place", "max_tokens": 600, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.read(6) == b"data: "  # decoding has begun
        process.send_signal(signal.SIGTERM)
        _serving.wait_for(lambda: "Waiting for connections to close" in log.read_text(), 30, "uvicorn's shutdown")
        with pytest.raises(httpx.ConnectError):  # no new connection is taken ...
            httpx.get(f"{url}/health", timeout=5)
        events = [line[len("data: "):] for line in ("data: " + response.read().decode()).split("\n\n") if line]
        # ... and the process exits once the running one is done; uvicorn then re-raises the SIGTERM it caught,
        # so the exit status is the signal's, as for a process that SIGTERM ended directly.
        assert process.wait(60) == -signal.SIGTERM
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 600  # every token, though SIGTERM came after the first
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert "Finished server process" in log.read_text()


def test_a_few_hundred_requests_from_16_clients_get_no_error_and_memory_stays_flat(tmp_path: Path) -> None:
    model, runs = _serving.gpt2_runs(tmp_path)
    prompts = ",".join(f"{name}={runs[name]}" for name in ("e2e", "names", "sentiment"))
    words = ["good", "bad", "the", "movie", "was", "john", "paris", "acme", "food", "area", "city", "a", "place"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(40)]

    def request(client: openai.OpenAI, index: int) -> str:
        text = texts[index % len(texts)]
        kind = index % 6
        if kind == 0:  # a greedy completion: its answer never changes
            return client.completions.create(model="e2e", prompt=text, max_tokens=12, temperature=0).choices[0].text
        if kind == 1:
            stream = client.completions.create(model="names", prompt=text, max_tokens=12, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in stream)
        if kind == 2:
            return client.completions.create(model=str(model), prompt=text, max_tokens=12, temperature=1.0,
                                             seed=index, stop=["paris"]).choices[0].text
        if kind == 3:
            chat = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": text}],
                                                  max_tokens=8, temperature=0)
            return chat.choices[0].message.content
        if kind == 4:
            reply = httpx.post(f"{client.base_url}classify", json={"model": "sentiment", "input": [text, "good film"]},
                               timeout=60)
            reply.raise_for_status()
            return reply.json()["data"][0]["label"]
        choices = client.completions.create(model="e2e", prompt=[text, text + " good"], max_tokens=6, temperature=0.7,
                                            seed=1, n=2).choices
        assert len(choices) == 4
        return choices[2].text

    with _serving.server_process(["--model", str(model), "--prompt", prompts, "--max-queue", "256"],
                                 tmp_path / "serve.log") as (process, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)

        def run(indices: range) -> list[str]:
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda i: request(client, i), indices))

        warm = run(range(96))
        before = _serving.rss_bytes(process.pid)
        start = time.monotonic()
        answers = run(range(96, 96 + 384))
        seconds = time.monotonic() - start
        after = _serving.rss_bytes(process.pid)
        metrics = httpx.get(f"{url}/metrics").text
    print(f"384 requests in {seconds:.1f} s; server RSS {before / 2**20:.1f} MiB after warm-up, "
          f"{after / 2**20:.1f} MiB at the end")
    assert after - before < 32 * 2**20, f"RSS grew {(after - before) / 2**20:.1f} MiB over 384 requests"
    # Greedy answers are the same every time they are asked, across the whole run.
    everything = warm + answers
    for kind in (0, 1, 3):
        seen: dict[str, str] = {}
        for index, answer in enumerate(everything):
            if index % 6 == kind:
                assert seen.setdefault(texts[index % len(texts)], answer) == answer
    assert 'status="200"' in metrics and 'status="5' not in metrics and 'status="4' not in metrics
